// Check that src/locale/fr.json translates every msgid used in src/ and nothing
// else. Run: npm run check:i18n
import { readFileSync, readdirSync } from 'node:fs'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { parseSrc } from 'vue3-gettext'

const root = fileURLToPath(new URL('..', import.meta.url))
const srcDir = join(root, 'src')

function sourceFiles(dir) {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name)
    if (entry.isDirectory()) return sourceFiles(path)
    return /\.(vue|js)$/.test(entry.name) ? [path] : []
  })
}

// msgid -> {context -> {messagePlural, where}}; plain strings use the '' context.
const used = new Map()
for (const file of sourceFiles(srcDir)) {
  for (const msg of parseSrc(readFileSync(file, 'utf8'))) {
    const contexts = used.get(msg.message) || new Map()
    const context = msg.context || ''
    if (!contexts.has(context)) {
      contexts.set(context, { ...msg, where: `${relative(root, file)}:${msg.lineNumber}` })
    }
    used.set(msg.message, contexts)
  }
}

const catalog = JSON.parse(readFileSync(join(srcDir, 'locale', 'fr.json'), 'utf8'))
const problems = []
const placeholders = (text) => [...String(text).matchAll(/%\{\s*(\w+)\s*\}/g)].map((m) => m[1]).sort().join()
const isContextMap = (value) => typeof value === 'object' && value !== null && !Array.isArray(value)

for (const [msgid, contexts] of used) {
  const entry = catalog[msgid]
  for (const [context, msg] of contexts) {
    const name = context ? `${JSON.stringify(msgid)} (context ${JSON.stringify(context)})` : JSON.stringify(msgid)
    const translation = isContextMap(entry) ? entry[context] : context ? undefined : entry
    if (translation === undefined) {
      problems.push(`missing: ${name} (${msg.where})`)
      continue
    }
    if (msg.messagePlural && !(Array.isArray(translation) && translation.length === 2)) {
      problems.push(`needs [singular, plural]: ${name}`)
    } else if (!msg.messagePlural && typeof translation !== 'string') {
      problems.push(`needs a string: ${name}`)
    }
    for (const text of [].concat(translation)) {
      if (placeholders(text) !== placeholders(msgid)) problems.push(`placeholders differ: ${name}`)
    }
  }
  if (isContextMap(entry)) {
    for (const context of Object.keys(entry)) {
      if (!contexts.has(context)) problems.push(`unused context ${JSON.stringify(context)} of ${JSON.stringify(msgid)}`)
    }
  }
}
for (const msgid of Object.keys(catalog)) {
  if (!used.has(msgid)) problems.push(`unused: ${JSON.stringify(msgid)}`)
}

if (problems.length) {
  console.error(problems.join('\n'))
  process.exit(1)
}
console.log(`fr.json covers the ${used.size} msgids used in src/.`)
