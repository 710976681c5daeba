// A small fetch client for Modoboa's API v2, authenticated like the host's own
// requests (axios is not shared with remotes). Call useApi() from setup().
import { inject } from 'vue'
import { useHostAuth } from './host.js'

/** A failed request: `status` is 0 when the server could not be reached. */
export class ApiError extends Error {
  constructor(status, body, message) {
    super(message || `HTTP ${status}`)
    this.name = 'ApiError'
    this.status = status
    this.body = body
  }
}

async function parseBody(response) {
  if (response.status === 204) return null
  const text = await response.text()
  if (!text) return null
  if ((response.headers.get('Content-Type') || '').includes('json')) {
    try {
      return JSON.parse(text)
    } catch {
      return text
    }
  }
  return text
}

function buildQuery(query) {
  const params = new URLSearchParams()
  for (const [key, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== '') params.append(key, String(value))
  }
  const text = params.toString()
  return text ? `?${text}` : ''
}

export function useApi() {
  const config = inject('$config', null)
  const baseUrl = String(config?.API_BASE_URL || '/api/v2').replace(/\/+$/, '')

  /**
   * @param {string} method
   * @param {string} path under API_BASE_URL, e.g. `/virtualhosts/`
   * @param {{ query?: Record<string, unknown>, body?: unknown }} [options]
   */
  async function request(method, path, { query, body } = {}) {
    // Read per request: oidc-client-ts renews the token in the background.
    const auth = useHostAuth()
    /** @type {Record<string, string>} */
    const headers = { Accept: 'application/json' }
    const token = await auth.getAccessToken()
    if (token) headers.Authorization = `Bearer ${token}`
    if (auth.authUser?.language) headers['Accept-Language'] = auth.authUser.language
    /** @type {RequestInit} */
    const init = { method, headers }
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json'
      init.body = JSON.stringify(body)
    }
    const url = `${baseUrl}${path}${buildQuery(query)}`
    let response
    try {
      response = await fetch(url, init)
    } catch (error) {
      throw new ApiError(0, null, `${method} ${url}: ${error.message}`)
    }
    const data = await parseBody(response)
    if (!response.ok) throw new ApiError(response.status, data, `${method} ${url}: HTTP ${response.status}`)
    return data
  }

  return {
    listHosts: (filters = {}) =>
      request('GET', '/virtualhosts/', { query: { page_size: 200, ...filters } }),
    getHost: (id) => request('GET', `/virtualhosts/${id}/`),
    createHost: (data) => request('POST', '/virtualhosts/', { body: data }),
    updateHost: (id, data) => request('PATCH', `/virtualhosts/${id}/`, { body: data }),
    deleteHost: (id) => request('DELETE', `/virtualhosts/${id}/`),
    retryHost: (id) => request('POST', `/virtualhosts/${id}/retry/`),
    renewHost: (id) => request('POST', `/virtualhosts/${id}/renew/`),
    getSummary: () => request('GET', '/virtualhosts/summary/'),
    // mail., autoconfig. and autodiscover.<domain>, each created or reported on its own.
    addDomainNames: (domain) => request('POST', '/virtualhosts/domain-names/', { body: { domain } }),
    // Modoboa's own list: a plain list, or a page when paginated.
    listDomains: async () => {
      const data = await request('GET', '/domains/')
      return Array.isArray(data) ? data : data?.results || []
    },
  }
}
