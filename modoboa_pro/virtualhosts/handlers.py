"""Signal handlers: react to desired-state changes, whoever made them (ORM, API, admin)."""

from __future__ import annotations

from django.db import transaction
from django.db.models import signals
from django.dispatch import receiver

from . import services
from .models import VirtualHost


@receiver(signals.pre_save, sender=VirtualHost)
def remember_enabled(sender, instance: VirtualHost, **kwargs) -> None:
    """Keep the stored ``enabled`` value to detect a change after saving."""
    if instance.pk is None:
        instance._previous_enabled = None  # type: ignore[attr-defined]
    else:
        instance._previous_enabled = (  # type: ignore[attr-defined]
            VirtualHost.objects.filter(pk=instance.pk).values_list("enabled", flat=True).first()
        )


@receiver(signals.post_save, sender=VirtualHost)
def start_provisioning(sender, instance: VirtualHost, created: bool, **kwargs) -> None:
    """Created or re-enabled: provision. Disabled: take the site out of nginx."""
    previous = getattr(instance, "_previous_enabled", None)
    if created:
        if instance.enabled:
            services.enqueue_provisioning(instance)
        return
    if previous is None or previous == instance.enabled:
        return
    if instance.enabled:
        services.enqueue_provisioning(instance)
    else:
        from . import jobs

        host_id = instance.pk
        transaction.on_commit(
            lambda: services._queue().enqueue(
                jobs.disable_virtualhost, host_id, job_id=services.job_id("disable", host_id)
            )
        )


@receiver(signals.post_delete, sender=VirtualHost)
def remove_site(sender, instance: VirtualHost, **kwargs) -> None:
    """Deleted: remove the site and archive the certificate files."""
    from . import jobs

    hostname = instance.hostname
    transaction.on_commit(lambda: services._queue().enqueue(jobs.remove_virtualhost, hostname))
