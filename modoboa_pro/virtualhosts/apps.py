"""Django app configuration."""

from django.apps import AppConfig


class VirtualHostsConfig(AppConfig):
    name = "modoboa_pro.virtualhosts"
    label = "virtualhosts"
    verbose_name = "Modoboa Pro: virtual hosts"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks, handlers, parameters  # noqa: F401

        parameters.register()
