import { useDisplay } from 'vuetify'

/** Narrow screens (phones, portrait tablets): tables stack, dialogs go fullscreen. */
export function useCompact() {
  return useDisplay().smAndDown
}
