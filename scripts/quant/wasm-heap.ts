/**
 * onnxruntime's wasm heap, as a quant-bench child reads it: the heap is a WebAssembly.Memory that
 * onnxruntime's glue creates in JS, so watching the constructor (before the runtime starts) finds it.
 * Its pages are never returned: the size is the high-water mark.
 */
import { MB } from '../../src/engine/memory-budget.js';

const memories: WebAssembly.Memory[] = [];

/** Records every WebAssembly.Memory created from now on; call it before the runtime starts. */
export function watchWasmMemory(): void {
  const Original = WebAssembly.Memory;
  WebAssembly.Memory = new Proxy(Original, {
    construct(target, args) {
      const m = Reflect.construct(target, args) as WebAssembly.Memory;
      memories.push(m);
      return m;
    },
  });
}

/** The largest watched memory, in MB (0 before any). */
export const heapMb = () => Math.max(0, ...memories.map((m) => m.buffer.byteLength)) / MB;
