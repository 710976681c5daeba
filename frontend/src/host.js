// Modoboa's own state, reached through the shared pinia instance (no `remotes:`,
// see vite.config.js). defineStore(id) returns the host's store already
// registered under that id; the empty setup is never used.
import { defineStore } from 'pinia'

export const SUPER_ADMIN = 'SuperAdmins'

/**
 * What we use of the host's stores.
 * @typedef {{ authUser: { role?: string, language?: string } | null, getAccessToken: () => Promise<string | null> }} HostAuth
 * @typedef {{ displayNotification: (options: { msg: string, type?: string }) => void }} HostBus
 * @typedef {{ fetchManifests: (options?: { force?: boolean }) => Promise<unknown> }} HostPlugins
 */

export const useHostAuth = defineStore('auth', () => /** @type {HostAuth} */ ({}))
const useHostBus = defineStore('bus', () => /** @type {HostBus} */ ({}))
const useHostPlugins = defineStore('plugins', () => /** @type {HostPlugins} */ ({}))

export function userRole() {
  return useHostAuth().authUser?.role || ''
}

/** Modoboa's snackbar. */
export function notify(msg, type = 'success') {
  try {
    useHostBus().displayNotification({ msg, type })
  } catch (error) {
    console.error('modoboa_pro.virtualhosts: cannot show a notification', error)
  }
}

/**
 * Reload Modoboa's plugin manifests, so that the "Modoboa Pro" menu item, whose
 * subtitle is our health summary, shows the new state. Best effort: a failure
 * here must not hide the result of the action that triggered it.
 */
export async function refreshProStatus() {
  try {
    await useHostPlugins().fetchManifests({ force: true })
  } catch {
    // The host already reports its own request errors.
  }
}
