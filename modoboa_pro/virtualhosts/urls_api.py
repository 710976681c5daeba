"""API v2 routes; Modoboa mounts this module under /api/v2/."""

from rest_framework import routers

from .api import viewsets

router = routers.SimpleRouter()
router.register(r"virtualhosts", viewsets.VirtualHostViewSet, basename="virtualhost")

urlpatterns = router.urls
