// The usual names' answer as shown in the domain's tab. Run: npm test
import assert from 'node:assert/strict'
import { test } from 'node:test'
import { domainNamesColor, domainNamesLines } from '../src/domainNames.js'

const interpolate = (text, params = {}) => text.replace(/%\{\s*(\w+)\s*\}/g, (_, key) => String(params[key]))
const gettext = { $gettext: interpolate }

const answer = {
  results: [
    { hostname: 'mail.example.com', outcome: 'created', message: 'mail.example.com created; ...' },
    { hostname: 'autoconfig.example.com', outcome: 'exists', message: '...' },
    { hostname: 'autodiscover.example.com', outcome: 'refused', message: 'Too long.' },
  ],
}

test('one line per name, with the reason of a refusal', () => {
  assert.deepEqual(
    domainNamesLines(gettext, answer).map((line) => [line.hostname, line.color, line.text]),
    [
      ['mail.example.com', 'success', 'mail.example.com: created; provisioning has started.'],
      ['autoconfig.example.com', 'info', 'autoconfig.example.com: already exists, left as it is.'],
      ['autodiscover.example.com', 'error', 'autodiscover.example.com: not created: Too long.'],
    ],
  )
})

test('the alert is a warning when a name was refused, else success or info', () => {
  assert.equal(domainNamesColor(answer), 'warning')
  assert.equal(domainNamesColor({ results: answer.results.slice(0, 2) }), 'success')
  assert.equal(domainNamesColor({ results: answer.results.slice(1, 2) }), 'info')
  assert.deepEqual(domainNamesLines(gettext, null), [])
})
