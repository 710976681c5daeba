"""Modoboa extension registration (loaded by Modoboa for each MODOBOA_APPS entry)."""

from django.utils.translation import gettext_lazy
from modoboa.core.extensions import ModoExtension, exts_pool


class VirtualHostsExtension(ModoExtension):
    """Automatic HTTPS for virtual hosts."""

    # Must equal the MODOBOA_APPS entry exactly, or Modoboa never loads it.
    name = "modoboa_pro.virtualhosts"
    label = gettext_lazy("Virtual hosts")
    description = gettext_lazy(
        "Serves every virtual host over HTTPS with certificates from Let's Encrypt"
    )
    url = "virtualhosts"


exts_pool.register_extension(VirtualHostsExtension)
