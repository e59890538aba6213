// wrangler's CompiledWasm rule turns a .wasm import into a module compiled at deploy time.
declare module '*.wasm' {
  const mod: WebAssembly.Module;
  export default mod;
}
