/**
 * What the playground's "run in this browser" downloads besides the model: its engine bundle and
 * onnxruntime-web's WebGPU-build binary. Built by scripts/lib/playground-assets.ts into the assets
 * directory's `_playground/` folder, listed there in `runtime.json`, served by the Worker at
 * /playground/runtime.json and /playground/files/{file} (src/worker/http/routes/playground.ts), read
 * by the page (src/playground/in-browser.ts). One module for the layout, so the three agree.
 *
 * The binary (26.8 MB) is over Cloudflare's 25 MiB per-asset limit, so it is stored as parts, each
 * within the limit, which the page fetches, concatenates and checks against the whole binary's
 * sha256 before onnxruntime sees it (docs/WEBGPU.md says why parts rather than a Data module).
 * Every file name carries the start of its sha256, so a URL always means the same bytes.
 */
import { z } from 'zod';

/** The folder in the assets directory (next to the models' folders; no model is named so). */
export const PLAYGROUND_ASSETS_DIR = '_playground';
export const RUNTIME_LIST = 'runtime.json';
/** Largest part of the binary: within the 25 MiB asset limit with room to spare. */
export const WASM_PART_BYTES = 20 * 1024 * 1024;

const fileEntry = z.object({
  file: z.string().regex(/^[\w.-]+$/),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  bytes: z.number().int().nonnegative(),
});
export type RuntimeFile = z.infer<typeof fileEntry>;

const runtimeList = z.object({
  /** the page's script: src/playground/in-browser.ts bundled with the engine and onnxruntime-web's JS */
  engine: fileEntry,
  /** onnxruntime-web's WebGPU-build binary, whole (file = its name in onnxruntime-web) and as parts */
  wasm: fileEntry.extend({ parts: z.array(fileEntry).min(1) }),
});
export type RuntimeList = z.infer<typeof runtimeList>;

export function parseRuntimeList(text: string): RuntimeList {
  const r = runtimeList.safeParse(JSON.parse(text));
  if (!r.success) throw new Error(`${RUNTIME_LIST} is malformed: ${r.error.issues[0]?.message ?? r.error.message}`);
  const parts = r.data.wasm.parts.reduce((n, p) => n + p.bytes, 0);
  if (parts !== r.data.wasm.bytes)
    throw new Error(`${RUNTIME_LIST}: the binary's parts hold ${parts} bytes, not its ${r.data.wasm.bytes}`);
  return r.data;
}

/** The files the Worker may serve from `_playground/`: the ones the list names, nothing else. */
export function servedFiles(list: RuntimeList): RuntimeFile[] {
  return [list.engine, ...list.wasm.parts];
}
