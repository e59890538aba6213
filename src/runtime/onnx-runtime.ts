/**
 * The only module that imports onnxruntime. Everything else sees plain typed arrays, so the
 * engine can be tested and reasoned about without the runtime, and a runtime swap touches one file.
 *
 * Two execution providers: `wasm` (Node, workerd, any browser) and `webgpu` (a browser with a WebGPU
 * adapter). The import below is onnxruntime-web's wasm-only build, which Node and the Worker bundle
 * (its binary, ort-wasm-simd-threaded.wasm, 14 MB). The browser bundle (scripts/lib/browser-bundle.ts)
 * maps it to `onnxruntime-web/webgpu`, the same API built with the WebGPU EP, whose binary is
 * ort-wasm-simd-threaded.asyncify.wasm; that bundle says so with initRuntime's `webgpu: true`.
 */
import * as ort from 'onnxruntime-web/wasm';

/** float32, float16 (as its bits), int8 and int64 tensors: what the shards take and return. */
export type TensorData = Float32Array | Uint16Array | Int8Array | BigInt64Array;
export interface HostTensor {
  data: TensorData;
  dims: readonly number[];
}

/** A compiled graph, created once and reused for every run. */
export interface GraphSession {
  readonly name: string;
  run(feeds: Record<string, HostTensor>): Promise<Record<string, HostTensor>>;
  release(): Promise<void>;
}

/**
 * Where the onnxruntime wasm comes from. Node passes the file's bytes. workerd forbids compiling
 * wasm from bytes at run time, so the Worker passes the `WebAssembly.Module` that wrangler compiled
 * at deploy time from an import of `ort-wasm-simd-threaded.wasm`.
 */
export type WasmSource = { binary: Uint8Array } | { module: WebAssembly.Module };

export class RuntimeError extends Error {
  override name = 'RuntimeError';
}

/** Where graphs run. */
export type ExecutionProvider = 'wasm' | 'webgpu';
/** What a caller asks for: `auto` is webgpu when this build has it and the browser gives an adapter, else wasm. */
export type ProviderSetting = ExecutionProvider | 'auto';
export const PROVIDER_SETTINGS: readonly ProviderSetting[] = ['wasm', 'webgpu', 'auto'];

/**
 * The ops onnxruntime-web 1.30's WebGPU EP runs in our shard graphs, as ORT's verbose node placement
 * log showed them in Chromium (SwiftShader adapter) for the int8-dequant, GGUF-dequant and integer2
 * builds: "domain:Op", or "Op" for ai.onnx (test/browser/webgpu-engine.test.ts runs the models). A graph with any other op does not go to WebGPU: ORT would quietly run that node on its
 * CPU EP, copying its inputs off and its outputs back onto the GPU, so the whole model stays on wasm.
 * Not in it: MatMulInteger and DynamicQuantizeLinear (the int8 `integer`/`integer2`/`row*` kernels:
 * ORT has no WebGPU kernel for either). com.microsoft:MatMulNBits has a WebGPU kernel in ORT's
 * sources but is not built or checked here, so it is left out until a test places it.
 * Two placements stay on ORT's CPU EP by ORT's own choice and are accepted: the int64 Split of
 * `attn_rows` (two numbers) and the Cast of int8 KV rows (`past_k_i8`/`past_v_i8`, empty unless the
 * KV format is int8, which the browser does not use).
 */
export const WEBGPU_OPS: ReadonlySet<string> = new Set([
  'Add',
  'Cast',
  'Concat',
  'Cos',
  'DequantizeLinear',
  'Div',
  'Floor',
  'Identity',
  'LessOrEqual',
  'MatMul',
  'Mul',
  'ReduceMean',
  'ReduceSum',
  'Reshape',
  'Sigmoid',
  'SimplifiedLayerNormalization',
  'Sin',
  'Slice',
  'Softmax',
  'Split',
  'Squeeze',
  'Sub',
  'Transpose',
  'Unsqueeze',
  'Where',
  'com.microsoft:RotaryEmbedding',
]);

/** The ops of `ops` a provider does not run ("domain:Op" as WEBGPU_OPS spells them); wasm runs every op we emit. */
export function unsupportedOps(provider: ExecutionProvider, ops: Iterable<string>): string[] {
  if (provider === 'wasm') return [];
  return [...new Set(ops)].filter((op) => !WEBGPU_OPS.has(op)).sort();
}

/** Whether webgpu can be used here, and why not when it cannot. */
export async function webgpuAvailability(): Promise<{ ok: true } | { ok: false; reason: string }> {
  if (!webgpuBuild)
    return { ok: false, reason: 'this onnxruntime build is wasm-only (Node and the Worker bundle no WebGPU EP)' };
  const gpu = (globalThis as { navigator?: { gpu?: { requestAdapter(): Promise<unknown> } } }).navigator?.gpu;
  if (!gpu) return { ok: false, reason: 'this browser has no WebGPU (navigator.gpu is missing)' };
  const adapter = await gpu.requestAdapter().catch(() => null);
  if (!adapter) return { ok: false, reason: 'this browser offers no WebGPU adapter' };
  return { ok: true };
}

/** The provider a model runs on, and why (the reason names what kept it off WebGPU, if anything did). */
export interface ProviderChoice {
  provider: ExecutionProvider;
  reason: string;
}

/**
 * Picks the provider for one whole model from the setting and its graphs' ops: never a mix per node.
 * `webgpu` asked for but impossible is a RuntimeError naming why; `auto` falls back to wasm with that
 * reason.
 */
export async function chooseProvider(
  setting: ProviderSetting,
  graphs: readonly { name: string; ops: Iterable<string> }[],
): Promise<ProviderChoice> {
  if (setting === 'wasm') return { provider: 'wasm', reason: 'wasm was asked for' };
  const available = await webgpuAvailability();
  let why: string | null = available.ok ? null : available.reason;
  if (!why)
    for (const g of graphs) {
      const missing = unsupportedOps('webgpu', g.ops);
      if (missing.length) {
        why = `graph "${g.name}" uses ${missing.join(', ')}, which onnxruntime-web's WebGPU EP does not run`;
        break;
      }
    }
  if (!why)
    return { provider: 'webgpu', reason: `${setting === 'auto' ? 'auto: ' : ''}a WebGPU adapter runs every op` };
  if (setting === 'webgpu') throw new RuntimeError(`webgpu cannot run this model: ${why}`);
  return { provider: 'wasm', reason: `auto: ${why}` };
}

let initialised: WasmSource | null = null;
let webgpuBuild = false;
let firstSession: Promise<unknown> | null = null;

export interface RuntimeInit {
  /** true only where onnxruntime-web/wasm resolves to the WebGPU build (the browser bundle), with its binary */
  webgpu?: boolean;
}

export function initRuntime(source: WasmSource, init: RuntimeInit = {}): void {
  if (initialised) return;
  webgpuBuild = init.webgpu ?? false;
  ort.env.wasm.numThreads = 1; // workerd has no threads; one thread also keeps Node measurements comparable
  ort.env.wasm.proxy = false;
  ort.env.logLevel = 'error';
  // A placeholder keeps the loader from fetching the binary by URL (import.meta.url is undefined in
  // workerd); the instantiate hook below substitutes the precompiled module.
  ort.env.wasm.wasmBinary = 'binary' in source ? source.binary : new Uint8Array(8);
  initialised = source;
}

let wasmMemory: WebAssembly.Memory | null = null;

function findMemory(
  imports: WebAssembly.Imports | undefined,
  instance: WebAssembly.Instance,
): WebAssembly.Memory | null {
  for (const v of Object.values(instance.exports)) if (v instanceof WebAssembly.Memory) return v;
  for (const mod of Object.values(imports ?? {}))
    for (const v of Object.values(mod)) if (v instanceof WebAssembly.Memory) return v;
  return null;
}

/**
 * While the first session is created, watch WebAssembly.instantiate: to keep a handle on the wasm
 * memory (its size is the heap onnxruntime holds: weights, activations, scratch), and in workerd, to
 * route instantiate(bytes) to the precompiled module. The hook is removed right after so that
 * nothing else in the isolate is affected.
 */
async function withInstantiateHook<T>(module: WebAssembly.Module | null, create: () => Promise<T>): Promise<T> {
  const original = WebAssembly.instantiate;
  const keep = (imports: WebAssembly.Imports | undefined) => (instance: WebAssembly.Instance) => {
    wasmMemory ??= findMemory(imports, instance);
    return instance;
  };
  const patched = ((source: unknown, imports?: WebAssembly.Imports) => {
    if (source instanceof WebAssembly.Module) return original(source, imports).then(keep(imports));
    if (module)
      return original(module, imports)
        .then(keep(imports))
        .then((instance) => ({ module, instance }));
    return (
      original(source as BufferSource, imports) as unknown as Promise<WebAssembly.WebAssemblyInstantiatedSource>
    ).then((r) => ({ module: r.module, instance: keep(imports)(r.instance) }));
  }) as typeof WebAssembly.instantiate;
  WebAssembly.instantiate = patched;
  try {
    return await create();
  } finally {
    WebAssembly.instantiate = original;
  }
}

/** Bytes of onnxruntime's wasm heap now (it only grows); null before the first session or if unseen. */
export function wasmHeapBytes(): number | null {
  return wasmMemory ? wasmMemory.buffer.byteLength : null;
}

const SESSION_OPTIONS: ort.InferenceSession.SessionOptions = {
  graphOptimizationLevel: 'all',
};

export interface GraphSessionOptions {
  /**
   * Let constant folding evaluate DequantizeLinear nodes whose inputs are all initializers, so that
   * quantized weights become f32 initializers once, at creation (ORT keeps them unfolded by default,
   * for its QDQ fusions, and then dequantizes on every run). Sets session.disable_quant_qdq.
   */
  foldDequantize?: boolean;
  /** where the graph runs (default wasm); chooseProvider decides it once per model */
  provider?: ExecutionProvider;
}

function elementType(d: TensorData): 'float32' | 'float16' | 'int8' | 'int64' {
  if (d instanceof Float32Array) return 'float32';
  if (d instanceof Uint16Array) return 'float16';
  if (d instanceof Int8Array) return 'int8';
  return 'int64';
}

/**
 * The session for a graph's bytes. A function of its own so that no closure of the returned
 * GraphSession shares a scope with `bytes`: V8 keeps one context per scope for all its closures, and
 * one capturing `bytes` there kept every shard's bytes alive as long as its session (measured: the
 * whole model's shard bytes stayed on the JS heap, npm run memory).
 */
async function openSession(name: string, bytes: Uint8Array, opts: GraphSessionOptions): Promise<ort.InferenceSession> {
  if (!initialised) throw new RuntimeError('initRuntime() must be called before creating sessions');
  const source = initialised;
  try {
    const provider = opts.provider ?? 'wasm';
    if (provider === 'webgpu' && !webgpuBuild) throw new Error('this onnxruntime build has no WebGPU EP');
    const options: ort.InferenceSession.SessionOptions = {
      ...SESSION_OPTIONS,
      executionProviders: [provider],
      ...(opts.foldDequantize ? { extra: { session: { disable_quant_qdq: '1' } } } : {}),
    };
    const create = () => ort.InferenceSession.create(bytes, options);
    if (!firstSession) {
      firstSession = withInstantiateHook('module' in source ? source.module : null, create);
      return (await firstSession) as ort.InferenceSession;
    }
    await firstSession.catch(() => undefined);
    return await create();
  } catch (e) {
    firstSession = null;
    throw new RuntimeError(`onnxruntime could not load graph "${name}": ${(e as Error)?.message ?? String(e)}`);
  }
}

export async function createGraphSession(
  name: string,
  bytes: Uint8Array,
  opts: GraphSessionOptions = {},
): Promise<GraphSession> {
  const session = await openSession(name, bytes, opts);
  return {
    name,
    async run(feeds) {
      const inputs: Record<string, ort.Tensor> = {};
      for (const [k, t] of Object.entries(feeds)) {
        inputs[k] = new ort.Tensor(elementType(t.data), t.data, t.dims);
      }
      let out: ort.InferenceSession.ReturnType;
      try {
        out = await session.run(inputs);
      } catch (e) {
        throw new RuntimeError(`graph "${name}" failed: ${(e as Error)?.message ?? String(e)}`);
      }
      const result: Record<string, HostTensor> = {};
      for (const [k, t] of Object.entries(out)) result[k] = { data: t.data as TensorData, dims: t.dims };
      return result;
    },
    release: () => session.release(),
  };
}

/**
 * Publishes this module's onnxruntime-web instance where peer libraries look for a host-provided
 * runtime (transformers.js uses globalThis[Symbol.for('onnxruntime')] instead of its own), so that
 * the benchmark runs them on the very same runtime and wasm binary as the engine. `loadPath` reads a
 * model path into bytes: such libraries pass paths in Node, which the web runtime cannot open.
 * Call after the first session of this module exists. Benchmarks only.
 */
export function exposeRuntimeForPeers(loadPath: (path: string) => Uint8Array): void {
  const create = ort.InferenceSession.create.bind(ort.InferenceSession) as (
    m: Uint8Array,
    o?: ort.InferenceSession.SessionOptions,
  ) => Promise<ort.InferenceSession>;
  const InferenceSession = Object.assign(Object.create(ort.InferenceSession), {
    create: (model: string | Uint8Array, options?: ort.InferenceSession.SessionOptions) =>
      create(typeof model === 'string' ? loadPath(model) : model, { ...options, executionProviders: ['wasm'] }),
  });
  (globalThis as Record<symbol, unknown>)[Symbol.for('onnxruntime')] = { ...ort, InferenceSession };
}
