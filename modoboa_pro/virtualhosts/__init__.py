"""Virtual hosts with automatic HTTPS (ACME HTTP-01, Nginx).

Where things happen (docs/development.md has the layers and the import contract):

    a host is created, enabled, disabled   services.py -> handlers.py -> queueing.py
    jobs are enqueued, deduplicated, timed  queueing.py (job ids, enqueue_once)
    a host is provisioned                  jobs.provision_virtualhost -> pipeline.provision
    a certificate is renewed               jobs.renew_virtualhost -> pipeline.renew
    whether a certificate is due           policy.decide (scan, dry run and pipeline)
    the daily scan picks what is due       jobs.check_certificate_renewals -> scan.run
    failed runs are retried (backoff)      policy.RETRY_BACKOFF; retries.py sweeps
    what a run records on the host         recording.py (only observed fields)
    the nginx config is written            rendering.py + templates/ -> adapters/nginx.py
    nginx is tested and reloaded           adapters/reloader.py (privileged queue)
    the ACME protocol                      adapters/acme.py
    certificate files on disk              adapters/storage.py (pairs), files.py, x509.py
    what nginx really serves               adapters/probe.py, adapters/tls.py
    alarms in Modoboa's UI                 alarms.py
"""
