import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'
import { federation } from '@module-federation/vite'

// Vite needs an HTML entry (index.html + src/main.js, both stubs). Modoboa loads
// only remoteEntry.js and its chunks, so the emitted page is dropped from the output.
function dropStubHtml() {
  return {
    name: 'modoboa-pro:drop-stub-html',
    apply: 'build',
    enforce: 'post',
    generateBundle(_options, bundle) {
      for (const fileName of Object.keys(bundle)) {
        if (fileName.endsWith('.html')) delete bundle[fileName]
      }
    },
  }
}

// The fallback copy of vue3-gettext (never used: the host provides the shared one)
// pulls in pofile, whose `fs` import Vite stubs for the browser. The warning is
// expected; any other one still shows.
function onLog(level, log, handler) {
  const expected =
    log.plugin === 'rolldown:vite-resolve' &&
    /^Module "fs" has been externalized/.test(log.message) &&
    log.message.includes('/node_modules/pofile/')
  if (!expected) handler(level, log)
}

export default defineConfig({
  plugins: [
    vue(),
    federation({
      name: 'modoboa_pro_virtualhosts',
      filename: 'remoteEntry.js',
      dts: false,
      exposes: {
        './VirtualHostList': './src/VirtualHostList.vue',
        './DomainVirtualHosts': './src/DomainVirtualHosts.vue',
        './ProInformation': './src/ProInformation.vue',
      },
      // No `remotes:` on purpose: with it the remote loads its own vue/pinia/gettext
      // instead of the host's (see shared/FRONTEND.md, "Findings that change the plan").
      shared: {
        vue: { singleton: true, requiredVersion: '^3.4.0' },
        'vue-router': { singleton: true, requiredVersion: '^4.0.0' },
        pinia: { singleton: true, requiredVersion: '^3.0.0' },
        vuetify: { singleton: true, requiredVersion: '^4.0.0' },
        'vue3-gettext': { singleton: true, requiredVersion: '^4.0.0-beta.1' },
      },
    }),
    dropStubHtml(),
  ],
  build: {
    target: 'esnext',
    outDir: '../modoboa_pro/virtualhosts/static/virtualhosts',
    emptyOutDir: true,
    rollupOptions: { onLog },
  },
})
