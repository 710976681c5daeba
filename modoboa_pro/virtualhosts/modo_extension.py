"""Modoboa extension registration (loaded by Modoboa for each MODOBOA_APPS entry).

Two extensions are registered from here, so that one MODOBOA_APPS line installs both:

- ``modoboa_pro.virtualhosts``: the Virtual hosts page, the domain tab and the
  Information panel, as a Module Federation remote shipped in ``static/virtualhosts``;
- ``modoboa_pro``: the product itself. Modoboa 2.12 reserves that exact name for the
  "Modoboa Pro" item closing its admin menu: registered, the item shows our status
  (a one-line certificate health summary) instead of an advertisement.
"""

from __future__ import annotations

import logging

from django.utils.translation import gettext_lazy
from modoboa.core.extensions import ModoExtension, exts_pool

from modoboa_pro import __version__

from . import conf, health
from .models import VirtualHost

logger = logging.getLogger("modoboa.jobs")

# The remote's name in the browser's federation runtime, and its entry in our static files.
REMOTE_NAME = "modoboa_pro_virtualhosts"
REMOTE_ENTRY = "virtualhosts/remoteEntry.js"
# Who sees the page; the API narrows Resellers and DomainAdmins to their domains' hosts.
ADMIN_ROLES = ["SuperAdmins", "Resellers", "DomainAdmins"]
ROUTE_NAME = "VirtualHostList"


class VirtualHostsExtension(ModoExtension):
    """Automatic HTTPS for virtual hosts."""

    # Must equal the MODOBOA_APPS entry exactly, or Modoboa never loads it.
    name = "modoboa_pro.virtualhosts"
    label = gettext_lazy("Virtual hosts")
    description = gettext_lazy(
        "Serves every virtual host over HTTPS with certificates from Let's Encrypt"
    )
    url = "virtualhosts"
    version = __version__

    frontend_remote = {"name": REMOTE_NAME, "static_path": REMOTE_ENTRY, "format": "esm"}
    frontend_menu_entries = [
        {
            "label": gettext_lazy("Virtual hosts"),
            "icon": "mdi-web",
            "to": ROUTE_NAME,
            "category": "admin",
            "roles": ADMIN_ROLES,
        }
    ]
    frontend_routes = [
        {
            "name": ROUTE_NAME,
            "path": "virtualhosts",
            "component": "./VirtualHostList",
            "parent": "AdminLayout",
            # The host's guard checks allowedRoles only when requiresAuth is true.
            "meta": {"requiresAuth": True, "allowedRoles": ADMIN_ROLES},
        }
    ]
    frontend_ui_extensions = {
        "domain.detail.tabs": [
            {
                "name": "modoboa_pro_virtualhosts",
                "title": gettext_lazy("Virtual hosts"),
                "component": "./DomainVirtualHosts",
            }
        ],
        # Rendered by the Information page's "Modoboa Pro" tab once ``modoboa_pro`` is
        # registered; declared here because a UI extension loads from its own manifest's remote.
        "admin.information.pro": [
            {"name": "modoboa_pro_virtualhosts_health", "component": "./ProInformation"}
        ],
    }

    def get_frontend_remote(self) -> dict | None:
        remote = super().get_frontend_remote()
        if remote is not None:
            # remoteEntry.js keeps its name across releases (its chunks are hashed):
            # the version in the URL makes browsers fetch the new one after an upgrade.
            remote["url"] = f"{remote['url']}?v={__version__}"
        return remote


class ModoboaProExtension(ModoExtension):
    """The product: its status line fills Modoboa's "Modoboa Pro" menu item."""

    # Modoboa 2.12's frontend looks for exactly this name (constants.PRO_PLUGIN_NAME).
    name = "modoboa_pro"
    label = "Modoboa Pro"
    description = gettext_lazy("Virtual hosts with automatic HTTPS")
    version = __version__
    url = "modoboa-pro"

    def get_frontend_status(self) -> dict | None:
        try:
            threshold = int(conf.param("certificate_renewal_threshold"))
            verdict = health.assess(health.collect(VirtualHost.objects.all(), threshold))
        except Exception:  # the whole SPA's menu comes from this answer: never fail it
            logger.exception("modoboa_pro: cannot compute the certificate health summary")
            return {"text": str(gettext_lazy("Certificate health unavailable")), "color": "warning"}
        return {"text": verdict.text, "color": verdict.color}


exts_pool.register_extension(VirtualHostsExtension)
exts_pool.register_extension(ModoboaProExtension)
