// Build entry stub: vite needs one. The UI is exposed through remoteEntry.js
// (see vite.config.js) and rendered by Modoboa's own app.
export {}
