// Re-run `tick` every INTERVAL_MS while `isMoving()` says a run is queued or
// running, and for GRACE_MS after kick() (retry and renew answer 202 while the
// host may still read "active": the run has not started yet).
import { onBeforeUnmount } from 'vue'

export const INTERVAL_MS = 2000
export const GRACE_MS = 30000

export function usePolling(tick, isMoving) {
  let timer = null
  let graceUntil = 0
  let stopped = false

  function clear() {
    if (timer !== null) clearTimeout(timer)
    timer = null
  }

  /** Plan the next tick if anything still moves; call after every load. */
  function schedule() {
    clear()
    if (stopped) return
    if (isMoving() || Date.now() < graceUntil) timer = setTimeout(run, INTERVAL_MS)
  }

  async function run() {
    timer = null
    try {
      await tick()
    } finally {
      schedule()
    }
  }

  function kick() {
    graceUntil = Date.now() + GRACE_MS
    schedule()
  }

  onBeforeUnmount(() => {
    stopped = true
    clear()
  })

  return { schedule, kick }
}
