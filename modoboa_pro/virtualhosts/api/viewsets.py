"""API v2 viewsets for virtual hosts."""

from __future__ import annotations

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Prefetch
from django.http import HttpResponse
from django.utils.translation import gettext as _
from django_filters import rest_framework as dj_filters
from modoboa.lib import pagination
from rest_framework import exceptions, filters, mixins, renderers, response, status, viewsets
from rest_framework import permissions as drf_permissions
from rest_framework.decorators import action
from rest_framework.parsers import JSONParser

from .. import conf, constants, dane, domain_names, health, metrics, presenters, services
from ..errors import (
    ConfigurationError,
    DuplicateHost,
    InvalidHostname,
    RunInProgress,
    VirtualHostError,
)
from ..models import VirtualHost, VirtualHostEvent
from . import exposition, permissions, serializers

# A host is three short fields: a bigger body is refused before it is read or parsed
# (Django itself answers an HTML 400 only past DATA_UPLOAD_MAX_MEMORY_SIZE, 2.5 MB).
MAX_BODY_BYTES = 64 * 1024


class RequestTooLarge(exceptions.APIException):
    """413: the body is larger than any valid request (DRF has no such exception)."""

    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"


def _check_body_size(request) -> None:
    try:
        size = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        size = 0  # Django reads no body it cannot size
    if size > MAX_BODY_BYTES:
        raise RequestTooLarge(
            _(
                "The request body is %(size)d bytes; send at most %(max)d: a JSON object "
                "with hostname, enabled and domain."
            )
            % {"size": size, "max": MAX_BODY_BYTES}
        )


class VirtualHostAPIError(exceptions.APIException):
    """An app error as an API answer: the status its class declares, its operator message."""

    def __init__(self, err: VirtualHostError) -> None:
        message = err.message
        if isinstance(err, RunInProgress):
            message += " " + _("Wait for it to finish, then look at the host's status.")
        super().__init__(message, code=type(err).__name__)
        self.status_code = err.http_status


class VirtualHostFilter(dj_filters.FilterSet):
    status = dj_filters.ChoiceFilter(choices=constants.STATUSES)
    enabled = dj_filters.BooleanFilter()

    class Meta:
        model = VirtualHost
        fields = ["status", "enabled", "domain"]


class VirtualHostViewSet(
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.CreateModelMixin,
    mixins.UpdateModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    """Virtual hosts: list, create, retrieve, enable/disable, delete, retry, renew."""

    permission_classes = (drf_permissions.IsAuthenticated, permissions.IsVirtualHostAdmin)
    pagination_class = pagination.CustomPageNumberPagination
    filter_backends = (
        dj_filters.DjangoFilterBackend,
        filters.SearchFilter,
        filters.OrderingFilter,
    )
    filterset_class = VirtualHostFilter
    search_fields = ["hostname"]
    ordering_fields = ["hostname", "status", "next_attempt_at", "created_at"]
    ordering = ["hostname"]
    http_method_names = ["get", "post", "patch", "delete", "head", "options"]
    # JSON only: form fields are all strings, and the types are checked strictly (415 otherwise).
    parser_classes = (JSONParser,)

    def initial(self, request, *args, **kwargs) -> None:
        # Before authentication: OAuth2 authentication reads the body (Django refuses one
        # over DATA_UPLOAD_MAX_MEMORY_SIZE with a bare HTML 400).
        _check_body_size(request)
        super().initial(request, *args, **kwargs)

    def get_queryset(self):
        events = VirtualHostEvent.objects.order_by("-started_at", "-id")
        recent = events[: presenters.RECENT_HISTORY]
        return (
            permissions.hosts_for(self.request.user)
            .select_related("domain")
            .prefetch_related(Prefetch("events", queryset=recent, to_attr="recent_events"))
        )

    def get_serializer_class(self):
        if self.action in ("update", "partial_update"):
            return serializers.VirtualHostUpdateSerializer
        return serializers.VirtualHostSerializer

    def _answer(self, host: VirtualHost, code: int = status.HTTP_200_OK):
        host = self.get_queryset().get(pk=host.pk)  # fresh state and history
        data = serializers.VirtualHostSerializer(host, context=self.get_serializer_context()).data
        return response.Response(data, status=code)

    def perform_create(self, serializer) -> None:
        data = serializer.validated_data
        try:
            serializer.instance = services.create_virtualhost(
                data["hostname"],
                enabled=data.get("enabled", True),
                domain=data.get("domain"),
                acme_profile=data.get("acme_profile", ""),
                serves_mail=data.get("serves_mail", False),
            )
        except ConfigurationError as err:
            raise exceptions.ValidationError({"non_field_errors": [err.message]}) from err
        except (InvalidHostname, DuplicateHost) as err:
            raise exceptions.ValidationError({"hostname": [err.message]}) from err
        except DjangoValidationError as err:
            raise exceptions.ValidationError(err.message_dict) from err
        except VirtualHostError as err:  # Redis down: 503, nothing saved
            raise VirtualHostAPIError(err) from err

    def create(self, request, *args, **kwargs):
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        self.perform_create(serializer)
        return self._answer(serializer.instance, status.HTTP_201_CREATED)

    def update(self, request, *args, **kwargs):
        host = self.get_object()
        serializer = self.get_serializer(host, data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        try:
            if "acme_profile" in data:
                services.set_acme_profile(host, data["acme_profile"])
            if "serves_mail" in data:
                services.set_serves_mail(host, data["serves_mail"])
            if "enabled" in data:
                services.set_enabled(host, data["enabled"])
        except VirtualHostError as err:
            raise VirtualHostAPIError(err) from err
        return self._answer(host)

    def perform_destroy(self, instance: VirtualHost) -> None:
        try:
            services.delete_virtualhost(instance)
        except VirtualHostError as err:
            raise VirtualHostAPIError(err) from err

    def _start(self, run) -> response.Response:
        host = self.get_object()
        try:
            run(host)
        except VirtualHostError as err:
            raise VirtualHostAPIError(err) from err
        return self._answer(host, status.HTTP_202_ACCEPTED)

    @action(methods=["get"], detail=False)
    def summary(self, request):
        """Certificate health of the hosts the caller may see, in one line and in counts."""
        hosts = permissions.hosts_for(request.user)
        data = health.summary(hosts, int(conf.param("certificate_renewal_threshold")))
        data["docs_url"] = conf.docs_url()
        return response.Response(data)

    @action(
        methods=["get"],
        detail=False,
        permission_classes=(drf_permissions.IsAuthenticated, permissions.IsSuperAdmin),
        renderer_classes=(renderers.JSONRenderer, *exposition.RENDERERS),
        pagination_class=None,
        filter_backends=(),
    )
    def metrics(self, request):
        """The Prometheus exposition (SuperAdmins only: it names every host)."""
        body, content_type = metrics.exposition(request.headers.get("Accept"))
        return HttpResponse(body, content_type=content_type)

    @action(methods=["post"], detail=True)
    def retry(self, request, pk=None):
        """Retry provisioning: re-run the chain, skipping the steps already done."""
        return self._start(services.retry_provisioning)

    @action(methods=["post"], detail=True)
    def renew(self, request, pk=None):
        """Renew the certificate now, through the same chain as a scheduled renewal."""
        return self._start(services.renew_now)

    @action(methods=["post"], detail=False, url_path="domain-names")
    def domain_names(self, request):
        """Create a domain's usual names: mail., autoconfig. and autodiscover.<domain>.

        201: at least one created, none refused; 200: all were there already; 207: some
        were refused (each name's outcome says why). Each created host is provisioned on
        its own: one whose DNS is missing fails alone.
        """
        body = serializers.DomainNamesSerializer(
            data=request.data, context=self.get_serializer_context()
        )
        body.is_valid(raise_exception=True)
        domain = body.validated_data["domain"]
        try:
            outcomes = services.create_domain_names(domain)
        except VirtualHostError as err:  # Let's Encrypt without an email, Redis down
            raise VirtualHostAPIError(err) from err
        ids = [o.host.pk for o in outcomes if o.host is not None]
        visible = set(self.get_queryset().filter(pk__in=ids).values_list("pk", flat=True))
        results = serializers.NameOutcomeSerializer(
            outcomes, many=True, context={"visible_ids": visible}
        ).data
        kinds = {o.outcome for o in outcomes}
        if domain_names.REFUSED in kinds:
            code = status.HTTP_207_MULTI_STATUS
        elif domain_names.CREATED in kinds:
            code = status.HTTP_201_CREATED
        else:
            code = status.HTTP_200_OK
        data = {
            "domain": domain.pk,
            "domain_name": domain.name,
            "summary": domain_names.summary(outcomes),
            "results": results,
        }
        return response.Response(data, status=code)

    @action(methods=["get"], detail=True)
    def tlsa(self, request, pk=None):
        """A mail host's TLSA 3 1 1 records (current and next key) and whether DNS publishes
        them, with warnings about 2 1 1 records (docs/mail.md)."""
        host = self.get_object()
        try:
            report = dane.report(
                host, conf.tlsa_ports(), conf.get("VIRTUALHOSTS_PREFLIGHT_RESOLVER") or None
            )
        except VirtualHostError as err:
            raise VirtualHostAPIError(err) from err
        data = report.as_dict()
        data["serves_mail"] = host.serves_mail
        data["keep_key"] = host.serves_mail and bool(conf.get("VIRTUALHOSTS_MAIL_KEEP_KEY"))
        return response.Response(data)

    @action(methods=["post"], detail=True, url_path="rotate-key")
    def rotate_key(self, request, pk=None):
        """Force a mail host's next key in: a renewal with it is queued now."""
        return self._start(services.rotate_key)
