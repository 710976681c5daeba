"""Signal handlers: react to desired-state changes, whoever made them (ORM, API, admin)."""

from __future__ import annotations

from django.db.models import signals
from django.dispatch import receiver

from . import services
from .models import VirtualHost


@receiver(signals.post_save, sender=VirtualHost)
def react_to_save(sender, instance: VirtualHost, created: bool, **kwargs) -> None:
    """Created or re-enabled: provision. Disabled: take the site out of nginx."""
    previous = instance.loaded_enabled
    instance.loaded_enabled = instance.enabled
    if created:
        if instance.enabled:
            services.enqueue_provisioning(instance)
        return
    if previous is None or previous == instance.enabled:
        return
    if instance.enabled:
        services.enqueue_provisioning(instance)
    else:
        services.enqueue_disable(instance)


@receiver(signals.post_delete, sender=VirtualHost)
def react_to_delete(sender, instance: VirtualHost, **kwargs) -> None:
    """Deleted: remove the site and archive the certificate files."""
    services.enqueue_removal(instance)
