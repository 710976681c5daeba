// Our strings are not in Modoboa's catalog: merge the French one into the host's
// gettext (shared vue3-gettext; a second instance would not be injected).
import { useGettext } from 'vue3-gettext'
import fr from './locale/fr.json'

const merged = new WeakSet()

const isContextMap = (value) => typeof value === 'object' && value !== null && !Array.isArray(value)

/**
 * Entries of `ours` written with a context ({context: msgstr}) keep the host's
 * own translation of the same msgid (under the '' context), so that merging
 * never changes a string of Modoboa itself.
 */
function withHostContexts(ours, host) {
  const result = {}
  for (const [msgid, translation] of Object.entries(ours)) {
    const existing = host[msgid]
    if (isContextMap(translation) && existing !== undefined) {
      result[msgid] = { ...(isContextMap(existing) ? existing : { '': existing }), ...translation }
    } else {
      result[msgid] = translation
    }
  }
  return result
}

/** useGettext(), with our catalog merged into the host's once. */
export function useTranslations() {
  const gettext = useGettext()
  if (!merged.has(gettext)) {
    const current = gettext.translations || {}
    const hostFr = current.fr || {}
    gettext.translations = { ...current, fr: { ...hostFr, ...withHostContexts(fr, hostFr) } }
    merged.add(gettext)
  }
  return gettext
}
