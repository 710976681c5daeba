// The answer of POST /virtualhosts/domain-names/ as lines to show, one per name.

const COLORS = { created: 'success', exists: 'info', refused: 'error' }

/**
 * One line per usual name: what became of it, in the user's language.
 * @param {{ $gettext: Function }} gettext
 * @param {{ results?: Array<{ hostname: string, outcome: string, message: string }> }} answer
 * @returns {Array<{ hostname: string, outcome: string, color: string, text: string }>}
 */
export function domainNamesLines(gettext, answer) {
  const results = Array.isArray(answer?.results) ? answer.results : []
  return results.map((result) => {
    const name = result.hostname
    let text
    if (result.outcome === 'created') {
      text = gettext.$gettext('%{name}: created; provisioning has started.', { name })
    } else if (result.outcome === 'exists') {
      text = gettext.$gettext('%{name}: already exists, left as it is.', { name })
    } else {
      // The server's reason (an invalid name): it says what to fix.
      text = gettext.$gettext('%{name}: not created: %{reason}', { name, reason: result.message })
    }
    return { hostname: name, outcome: result.outcome, color: COLORS[result.outcome] || 'error', text }
  })
}

/** The alert's colour for the whole answer: any refusal shows as a warning. */
export function domainNamesColor(answer) {
  const outcomes = (Array.isArray(answer?.results) ? answer.results : []).map((r) => r.outcome)
  if (outcomes.includes('refused')) return 'warning'
  return outcomes.includes('created') ? 'success' : 'info'
}
