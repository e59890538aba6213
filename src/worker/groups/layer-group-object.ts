import { DurableObject } from 'cloudflare:workers';
import type { SequenceState } from '../../engine/caches.js';
import { EngineError } from '../../engine/errors.js';
import { groupState } from '../../engine/layer-group.js';
import type { ModelPart } from '../../engine/model.js';
import { embedStep, headStep, runLayers, type Frontier } from '../../engine/step.js';
import { wasmHeapBytes } from '../../runtime/onnx-runtime.js';
import type { Env } from '../env.js';
import { failureFrom, failureOf } from '../faults.js';
import { groupPart } from './config.js';
import { compactFrontier } from './frontier.js';
import { groupModel, manifestOf } from './parts.js';
import type { GroupAddress, GroupStepCall, GroupStepReply, IsolateProbe, Result } from './types.js';

/** Drawn once per isolate: tells whether two objects run in the same one. */
const ISOLATE_ID = crypto.randomUUID();

/**
 * A lease nobody has used for this long is abandoned (its front Worker died or its client left
 * without a release) and may be taken over. Longer than any one step runs.
 */
export const LEASE_IDLE_MS = 180_000;

/**
 * One group of decoder layers, as a Durable Object: it holds its layers' weights (once per isolate,
 * parts.ts) and, for the request it serves, its layers' KV rows and Aux Cache entries. Every RPC
 * method answers a Result; none throws.
 *
 * State belongs to one lease at a time (a stateless request). The chain's first group is its lock:
 * `acquire` there is refused while another live lease holds it; the later groups are taken by
 * whoever holds the first, and drop the state of any lease before. A step under any other lease
 * than the holder's is refused, so two requests never mix their states.
 */
export class LayerGroup extends DurableObject<Env> {
  private lease: { id: string; at: number } | null = null;
  private state: SequenceState | null = null;
  private stepping = false;

  private async part(a: GroupAddress): Promise<ModelPart> {
    const m = await manifestOf(this.env);
    return groupModel(this.env, groupPart(m.config.nLayers, m.files.head.length, a.groups, a.group));
  }

  private held(lease: string): boolean {
    return this.lease?.id === lease;
  }

  /** Takes the object for `a.lease` with an empty state (`exclusive`: refused while another live lease holds it). */
  async acquire(a: GroupAddress & { exclusive: boolean }): Promise<Result<{ loaded: boolean }>> {
    try {
      const now = Date.now();
      if (a.exclusive && this.lease && !this.held(a.lease) && now - this.lease.at < LEASE_IDLE_MS) {
        return failureOf(503, 'This layer-group chain is serving another request.', 'chain_busy');
      }
      if (this.stepping) return failureOf(503, 'This layer group is in the middle of a step.', 'chain_busy');
      const part = await this.part(a);
      this.lease = { id: a.lease, at: now };
      this.state = groupState(part.config, part.layerRange);
      return { ok: true, loaded: true };
    } catch (e) {
      return failureFrom(e, 'layer group acquire');
    }
  }

  /** Runs the step over this group's layers for the lease holding it. */
  async step(call: GroupStepCall): Promise<Result<GroupStepReply>> {
    if (!this.held(call.lease) || !this.state) return failureOf(409, 'This layer group is no longer held by this request (it was taken over after being idle).', 'lease_lost');
    if (this.stepping) return failureOf(409, 'A step is already running on this layer group.', 'chain_busy');
    this.stepping = true;
    try {
      const part = await this.part(call);
      const seq = this.state;
      if ('tokens' in call.input !== (call.group === 0)) throw new EngineError(`group ${call.group} was sent ${'tokens' in call.input ? 'tokens' : 'a frontier'}; group 0 embeds tokens, the others take a frontier`, 'internal');
      const into: Frontier = 'tokens' in call.input ? await embedStep(part, seq.length, call.input.tokens) : call.input.frontier;
      const { frontier, stats } = await runLayers(part, seq, into, { schedule: call.schedule });
      this.lease = { id: call.lease, at: Date.now() };
      const output = call.group === call.groups - 1 ? { logits: await headStep(part, frontier) } : { frontier: compactFrontier(frontier) };
      return { ok: true, output, stats };
    } catch (e) {
      // A failed step leaves the state partly changed: nobody may continue from it.
      this.state = null;
      this.lease = null;
      return failureFrom(e, 'layer group step');
    } finally {
      this.stepping = false;
    }
  }

  /** Frees the object (the state is dropped) if `lease` still holds it. */
  async release(lease: string): Promise<void> {
    if (!this.held(lease) || this.stepping) return;
    this.lease = null;
    this.state = null;
  }

  /** Which isolate this object runs in, its wasm heap, and what its state holds: for tests and measurements. */
  async probe(): Promise<IsolateProbe> {
    const s = this.state;
    return {
      isolate: ISOLATE_ID,
      wasm_heap_bytes: wasmHeapBytes(),
      tokens: s?.length ?? 0,
      kv_bytes: s?.kvBytes() ?? 0,
      aux_bytes: s?.aux.bytes ?? 0,
    };
  }
}
