// Pure helpers of src/format.js. Run: npm test
import assert from 'node:assert/strict'
import { test } from 'node:test'
import {
  LIFETIME_CRITICAL_SHARE,
  LIFETIME_OK_SHARE,
  certificateColor,
  compareHosts,
  daysLeftText,
  errorBodyText,
  errorText,
  formatDate,
  formatDateTime,
  formatDuration,
  isFailing,
  lastErrorText,
  lifetimeColor,
  lifetimeShare,
  nextActionText,
  statusColor,
  statusLabel,
} from '../src/format.js'

// A stand-in for vue3-gettext: English, with %{name} interpolation.
const interpolate = (text, params = {}) => text.replace(/%\{\s*(\w+)\s*\}/g, (_, key) => String(params[key]))
const gettext = {
  $gettext: interpolate,
  $pgettext: (_context, text, params) => interpolate(text, params),
  $ngettext: (one, many, n, params) => interpolate(n === 1 ? one : many, params),
}

test('status labels, with the running step while provisioning', () => {
  assert.equal(statusLabel(gettext, 'http_only'), 'HTTP only')
  assert.equal(statusLabel(gettext, 'disabled'), 'Disabled')
  assert.equal(statusLabel(gettext, 'paused'), 'Paused')
  assert.equal(statusLabel(gettext, 'provisioning', 'order'), 'Provisioning: Certificate order')
  assert.equal(statusLabel(gettext, 'provisioning', null), 'Provisioning')
})

test('certificate colour follows the API state: 3 days left are fine for 6 days, not for 90', () => {
  // The API's answers for a 6-day and a 90-day certificate, each with 3 days left.
  const six = { days_left: 3, lifetime_left: 0.5, state: 'due' }
  const ninety = { days_left: 3, lifetime_left: 0.0333, state: 'expiring' }
  assert.equal(certificateColor(six), 'success')
  assert.equal(certificateColor(ninety), 'error')
  assert.equal(certificateColor({ lifetime_left: 0.3, state: 'overdue' }), 'warning')
  assert.equal(certificateColor({ lifetime_left: 0.9, state: 'valid' }), 'success')
  assert.equal(certificateColor({ lifetime_left: -0.1, state: 'expired' }), 'error')
  // The share alone (an answer without a state) agrees on both.
  assert.equal(certificateColor({ lifetime_left: 0.5 }), 'success')
  assert.equal(certificateColor({ lifetime_left: 0.0333 }), 'error')
  assert.equal(certificateColor(null), 'grey')
})

test('lifetime colour follows the share left, not days', () => {
  assert.equal(lifetimeColor(0.9), 'success')
  assert.equal(lifetimeColor(LIFETIME_OK_SHARE), 'warning')
  assert.equal(lifetimeColor(0.25), 'warning')
  assert.equal(lifetimeColor(LIFETIME_CRITICAL_SHARE), 'warning')
  assert.equal(lifetimeColor(0.1), 'error')
  assert.equal(lifetimeColor(-0.2), 'error')
  assert.equal(lifetimeColor(null), 'grey')
})

test('lifetime share: from the API, else from the validity dates', () => {
  assert.equal(lifetimeShare({ lifetime_left: 0.42 }), 0.42)
  const certificate = { not_before: '2026-01-01T00:00:00Z', not_after: '2026-01-11T00:00:00Z' }
  assert.equal(lifetimeShare(certificate, Date.parse('2026-01-09T00:00:00Z')), 0.2)
})

test('days left and expiry', () => {
  assert.equal(daysLeftText(gettext, { days_left: 1, lifetime_left: 0.01 }), '1 day left')
  assert.equal(daysLeftText(gettext, { days_left: 68, lifetime_left: 0.75 }), '68 days left')
  assert.equal(daysLeftText(gettext, { days_left: -3, lifetime_left: -0.03 }), 'Expired')
})

test('dates are UTC', () => {
  assert.equal(formatDate('2027-01-31T23:59:59Z'), '2027-01-31')
  assert.equal(formatDateTime('2027-01-31T03:17:39Z'), '2027-01-31 03:17 UTC')
  assert.equal(formatDateTime('2027-01-31T03:17:39Z', { seconds: true }), '2027-01-31 03:17:39 UTC')
  assert.equal(formatDate(null), '')
})

test('next action', () => {
  const at = '2027-01-01T03:17:39Z'
  assert.equal(nextActionText(gettext, { next_action: 'renewal', next_attempt_at: at }), 'Renewal planned at 2027-01-01 03:17 UTC')
  assert.equal(nextActionText(gettext, { next_action: 'retry', next_attempt_at: at }), 'Retry at 2027-01-01 03:17 UTC')
  assert.equal(nextActionText(gettext, { next_action: null, next_attempt_at: null }), '—')
})

test('last error is prefixed with the failed step', () => {
  const host = { last_error: 'DNS for x points elsewhere', failed_step: 'order' }
  assert.equal(lastErrorText(gettext, host), 'Certificate order: DNS for x points elsewhere')
  assert.equal(lastErrorText(gettext, { last_error: '' }), '')
})

test('default order: failed, then running, then by hostname', () => {
  const hosts = [
    { hostname: 'b.example', status: 'active' },
    { hostname: 'a.example', status: 'active' },
    { hostname: 'c.example', status: 'pending' },
    { hostname: 'd.example', status: 'failed' },
    { hostname: 'e.example', status: 'provisioning' },
    { hostname: 'f.example', status: 'paused' },
  ]
  assert.deepEqual(
    [...hosts].sort(compareHosts).map((host) => host.hostname),
    ['d.example', 'f.example', 'c.example', 'e.example', 'a.example', 'b.example'],
  )
})

test('a paused host shows its error and Retry, in its own colour', () => {
  assert.ok(isFailing({ status: 'paused' }) && isFailing({ status: 'failed' }))
  assert.ok(!isFailing({ status: 'active' }) && !isFailing(null))
  assert.equal(statusColor('paused'), 'warning')
})

test('error bodies are shown verbatim', () => {
  assert.equal(errorBodyText({ detail: 'A run for x is already in progress.' }), 'A run for x is already in progress.')
  assert.equal(errorBodyText({ non_field_errors: ['Set the email.'] }), 'Set the email.')
  assert.equal(errorBodyText({ hostname: ['Bad name.'], domain: ['Bad domain.'] }), 'Bad name. Bad domain.')
  assert.equal(errorBodyText('<html>oops</html>'), '')
  assert.equal(errorText(gettext, { status: 502, body: null }), 'The server answered with an error (HTTP 502).')
  assert.equal(errorText(gettext, { status: 0, body: null }), 'Cannot reach the server: check your connection.')
})

test('durations use the decimal separator of the UI language', () => {
  assert.equal(formatDuration(gettext, 0.214), '0.21 s')
  assert.equal(formatDuration(gettext, 42.4), '42 s')
  assert.equal(formatDuration({ ...gettext, current: 'fr' }, 3.44), '3,4 s')
})
