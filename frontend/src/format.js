// Pure helpers for the virtual hosts UI: labels, colours, dates. No Vue, no I/O,
// so node's test runner can import this file as is (tests/format.test.js).
// Functions that produce text take the gettext function (`$gettext` or the whole
// gettext object) as a parameter so that every msgid stays a literal here.

export const STATUSES = [
  'pending',
  'provisioning',
  'active',
  'http_only',
  'failed',
  'paused',
  'disabled',
]

// A host in one of these states failed and shows its last error; `paused` failed for days
// (or was paused by the CA) and is not retried until an operator retries it.
export const FAILING_STATUSES = ['failed', 'paused']

// A host in one of these states has a run queued or running: the UI polls it.
export const MOVING_STATUSES = ['pending', 'provisioning']

// Shares of the certificate's total lifetime still left. certmagic renews at 1/3
// left (DefaultRenewalWindowRatio), so above it nothing is due: green. Between 1/3
// and 1/6 a renewal is due and still has time to succeed: amber. Under 1/6 (for a
// 90-day certificate, 15 days) renewals have been failing for weeks: red.
export const LIFETIME_OK_SHARE = 1 / 3
export const LIFETIME_CRITICAL_SHARE = 1 / 6

// The colour of the API's `certificate.state` (policy.certificate_state on the server,
// the same rule as the command line's colours and the alarms): `due` is fine, its
// renewal is planned; `overdue` means renewals are not happening; `expiring` is under a
// sixth of the lifetime left. A 6-day certificate with 3 days left is `due` (green), a
// 90-day one with 3 days left `expiring` (red).
const STATE_COLORS = {
  valid: 'success',
  due: 'success',
  overdue: 'warning',
  expiring: 'error',
  expired: 'error',
}

// Order of the default listing: what needs the operator first.
const STATUS_PRIORITY = {
  failed: 0,
  paused: 0,
  provisioning: 1,
  pending: 1,
  http_only: 2,
  active: 3,
  disabled: 4,
}

const STATUS_COLORS = {
  pending: 'info',
  provisioning: 'info',
  active: 'success',
  http_only: 'warning',
  failed: 'error',
  paused: 'warning',
  disabled: 'grey',
}

export function isFailing(host) {
  return Boolean(host) && FAILING_STATUSES.includes(host.status)
}

export function isMoving(host) {
  return Boolean(host) && MOVING_STATUSES.includes(host.status)
}

export function statusColor(status) {
  return STATUS_COLORS[status] || 'grey'
}

export function statusPriority(status) {
  return status in STATUS_PRIORITY ? STATUS_PRIORITY[status] : 5
}

export function stepLabel(gettext, step) {
  const { $gettext } = gettext
  switch (step) {
    case 'http_site':
      return $gettext('HTTP-only site')
    case 'account':
      return $gettext('ACME account')
    case 'order':
      return $gettext('Certificate order')
    case 'store':
      return $gettext('Certificate stored')
    case 'https_site':
      return $gettext('HTTPS site')
    case 'verify':
      return $gettext('Served certificate verified')
    case 'remove':
      return $gettext('Site removed')
    case 'renew':
      return $gettext('Renewal')
    case 'mail_deploy':
      return $gettext('Mail services deployed')
    case 'mail_verify':
      return $gettext('Mail certificate verified')
    case 'key':
      return $gettext('Private key chosen')
    case 'tlsa':
      return $gettext('TLSA records checked')
    default:
      return step || ''
  }
}

/** The status as the chip shows it; while provisioning, with the running step. */
export function statusLabel(gettext, status, currentStep = null) {
  const { $gettext } = gettext
  switch (status) {
    case 'pending':
      return $gettext('Pending')
    case 'provisioning':
      return currentStep
        ? $gettext('Provisioning: %{step}', { step: stepLabel(gettext, currentStep) })
        : $gettext('Provisioning')
    case 'active':
      return $gettext('Active')
    case 'http_only':
      return $gettext('HTTP only')
    case 'failed':
      return $gettext('Failed')
    case 'paused':
      return $gettext('Paused')
    case 'disabled':
      // Modoboa's catalog has "Disabled" as a plural ("Désactivés"): ours has a context.
      return gettext.$pgettext('virtual host status', 'Disabled')
    default:
      return status || ''
  }
}

export function outcomeLabel(gettext, outcome) {
  const { $gettext } = gettext
  switch (outcome) {
    case 'ok':
      return $gettext('Succeeded')
    case 'failed':
      return $gettext('Failed')
    case 'skipped':
      return $gettext('Skipped')
    default:
      return outcome || ''
  }
}

export function outcomeColor(outcome) {
  return { ok: 'success', failed: 'error', skipped: 'grey' }[outcome] || 'grey'
}

function toDate(iso) {
  if (!iso) return null
  const date = new Date(iso)
  return Number.isNaN(date.getTime()) ? null : date
}

const pad = (n) => String(n).padStart(2, '0')

/** `2027-01-31` (UTC, the time zone of the certificate and of the server). */
export function formatDate(iso) {
  const date = toDate(iso)
  if (!date) return ''
  return `${date.getUTCFullYear()}-${pad(date.getUTCMonth() + 1)}-${pad(date.getUTCDate())}`
}

/** `2027-01-31 03:17 UTC`, or with `seconds` `2027-01-31 03:17:39 UTC`. */
export function formatDateTime(iso, { seconds = false } = {}) {
  const date = toDate(iso)
  if (!date) return ''
  let time = `${pad(date.getUTCHours())}:${pad(date.getUTCMinutes())}`
  if (seconds) time += `:${pad(date.getUTCSeconds())}`
  return `${formatDate(iso)} ${time} UTC`
}

/** `0.21 s`, `3.4 s`, `42 s`, with the decimal separator of the UI language. */
export function formatDuration(gettext, seconds) {
  if (typeof seconds !== 'number' || Number.isNaN(seconds)) return ''
  let digits = 0
  if (seconds < 1) digits = 2
  else if (seconds < 10) digits = 1
  let text
  try {
    const locale = gettext.current ? String(gettext.current).replace('_', '-') : 'en'
    text = new Intl.NumberFormat(locale, {
      minimumFractionDigits: digits,
      maximumFractionDigits: digits,
    }).format(seconds)
  } catch {
    text = seconds.toFixed(digits)
  }
  return gettext.$gettext('%{seconds} s', { seconds: text })
}

/**
 * Share (0..1, <= 0 once expired) of the certificate's lifetime still left.
 * The API sends it as `lifetime_left`; older answers without it are computed
 * from the validity dates.
 */
export function lifetimeShare(certificate, now = Date.now()) {
  if (!certificate) return null
  if (typeof certificate.lifetime_left === 'number') return certificate.lifetime_left
  const start = toDate(certificate.not_before)
  const end = toDate(certificate.not_after)
  if (!start || !end || end <= start) return null
  return (end.getTime() - now) / (end.getTime() - start.getTime())
}

export function lifetimeColor(share) {
  if (typeof share !== 'number' || Number.isNaN(share)) return 'grey'
  if (share > LIFETIME_OK_SHARE) return 'success'
  if (share >= LIFETIME_CRITICAL_SHARE) return 'warning'
  return 'error'
}

/** The certificate's colour: by its state when the API gives one, else by the share left. */
export function certificateColor(certificate, now = Date.now()) {
  const byState = STATE_COLORS[certificate?.state]
  return byState || lifetimeColor(lifetimeShare(certificate, now))
}

export function isExpired(certificate, now = Date.now()) {
  const share = lifetimeShare(certificate, now)
  if (typeof share === 'number') return share <= 0
  return typeof certificate?.days_left === 'number' && certificate.days_left < 0
}

/** `68 days left`, or `Expired`. */
export function daysLeftText(gettext, certificate, now = Date.now()) {
  if (!certificate) return ''
  if (isExpired(certificate, now)) return gettext.$gettext('Expired')
  const days = certificate.days_left
  if (typeof days !== 'number') return ''
  return gettext.$ngettext('%{days} day left', '%{days} days left', days, { days })
}

export function expiresText(gettext, certificate) {
  if (!certificate?.not_after) return ''
  return gettext.$gettext('expires %{date}', { date: formatDate(certificate.not_after) })
}

/** `Renewal on 2027-01-01`, `Retry at 2026-11-02 03:27 UTC`, or `—`. */
export function nextActionText(gettext, host) {
  const { $gettext } = gettext
  const when = host?.next_attempt_at
  if (host?.next_action === 'renewal' && when) {
    return $gettext('Renewal planned at %{datetime}', { datetime: formatDateTime(when) })
  }
  if (host?.next_action === 'retry' && when) {
    return $gettext('Retry at %{datetime}', { datetime: formatDateTime(when) })
  }
  return '—'
}

/** `Certificate order: <last error>` for a failed host, else ''. */
export function lastErrorText(gettext, host) {
  if (!host?.last_error) return ''
  if (!host.failed_step) return host.last_error
  return gettext.$gettext('%{step}: %{error}', {
    step: stepLabel(gettext, host.failed_step),
    error: host.last_error,
  })
}

/** The default order of the listing: failed, then running, then the rest; by hostname. */
export function compareHosts(a, b) {
  const byStatus = statusPriority(a.status) - statusPriority(b.status)
  if (byStatus !== 0) return byStatus
  return compareText(a.hostname, b.hostname)
}

export function compareText(a, b) {
  const x = a || ''
  const y = b || ''
  if (x < y) return -1
  return x > y ? 1 : 0
}

/** Compare ISO timestamps, missing ones last. */
export function compareDates(a, b) {
  const x = toDate(a)
  const y = toDate(b)
  if (!x && !y) return 0
  if (!x) return 1
  if (!y) return -1
  return x.getTime() - y.getTime()
}

function collectMessages(value) {
  if (value === null || value === undefined) return []
  if (typeof value === 'string') return value.trim() ? [value.trim()] : []
  if (Array.isArray(value)) return value.flatMap(collectMessages)
  if (typeof value === 'object') return Object.values(value).flatMap(collectMessages)
  return [String(value)]
}

/**
 * The words of an API error body, verbatim: `detail`, else `non_field_errors`,
 * else every field message. '' when the body holds none (HTML page, empty).
 */
export function errorBodyText(body) {
  if (typeof body === 'string') return /^\s*</.test(body) ? '' : body.trim()
  if (!body || typeof body !== 'object') return ''
  if ('detail' in body) return collectMessages(body.detail).join(' ')
  if ('non_field_errors' in body) return collectMessages(body.non_field_errors).join(' ')
  return collectMessages(body).join(' ')
}

/** What to show for a failed request (an ApiError from api.js, or anything thrown). */
export function errorText(gettext, error) {
  const text = errorBodyText(error?.body)
  if (text) return text
  if (error?.status === 0) return gettext.$gettext('Cannot reach the server: check your connection.')
  if (error?.status) {
    return gettext.$gettext('The server answered with an error (HTTP %{status}).', {
      status: error.status,
    })
  }
  return gettext.$gettext('Unexpected error: %{error}', { error: String(error?.message || error) })
}
