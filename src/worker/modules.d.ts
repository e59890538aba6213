// wrangler's CompiledWasm rule turns a .wasm import into a module compiled at deploy time.
declare module '*.wasm' {
  const mod: WebAssembly.Module;
  export default mod;
}

// wrangler's Text rule (wrangler.toml) turns an .html import into its text: the playground page.
declare module '*.html' {
  const text: string;
  export default text;
}
