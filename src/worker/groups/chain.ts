/**
 * The front Worker's side of a split model: a chain of LayerGroup objects run as one model. Each
 * step is one call to the chain's first group, which hands the frontier (hidden states of the
 * tokens still computed, the active set and its scores) to the next group itself, and so on down
 * the chain (layer-group-object.ts handOn); the last group's logits, or its last hidden state for
 * the classifier objects, come back up with every group's figures. Sampling, stop strings and
 * streaming stay in the front (engine/generate.ts, with this runner).
 */
import { SequenceState } from '../../engine/caches.js';
import { kvRowBytes } from '../../engine/kv-rows.js';
import type { GenerationStats, StepRunner } from '../../engine/generate.js';
import type { ModelConfig } from '../../model/config.js';
import {
  composeStep,
  embedStep,
  lastHidden,
  stepStats,
  type Frontier,
  type LayerStats,
  type Stage,
  type StepStats,
} from '../../engine/step.js';
import type { Ranking } from '../../engine/policy.js';
import { commonPrefix } from '../../engine/turns.js';
import type { Env } from '../env.js';
import { failureOf, Refusal, retryHeaders } from '../faults.js';
import { configOf } from '../config.js';
import type { ModelEnv } from '../model-store.js';
import { fromWire, toWire, wireBytes } from './frontier.js';
import { frontModel } from './parts.js';
import { groupStub } from './stub.js';
import { LEASE_IDLE_MS, type LayerGroup } from './layer-group-object.js';
import type { Failure, GroupStepCall, GroupStepReply } from './types.js';
import type { Runner } from '../job/run.js';

export type GroupStub = DurableObjectStub<LayerGroup>;

/** What crossed RPC boundaries, for lazy_stats.split. */
export interface SplitStats {
  groups: number;
  /** classifier objects after the layer groups */
  heads: number;
  /** the chain that served the request (stateless) */
  chain?: number;
  /**
   * bytes that crossed the object boundaries in the prefill step: the frontiers (active set,
   * scores, carried hidden states, token ids) summed over the boundaries they crossed, the groups
   * handing them on to each other (plus the front's embedding into group 0, and the last hidden
   * state out to the classifier objects when there are any)
   */
  prefill_boundary_bytes: number;
  /** the same per decode step, averaged */
  decode_boundary_bytes_per_step: number;
  /** steps run (1 prefill + decode steps) */
  steps: number;
  /** the steps the prefill went through the chain in (more than 1 when PREFILL_STEP_TOKENS cut it) */
  prefill_steps: number;
}

function unwrap<T extends object>(r: ({ ok: true } & T) | Failure): T {
  if (!r.ok) throw new Refusal(r as Failure, retryHeaders(r as Failure));
  return r as T;
}

/** A step's call to the chain's first group, which hands it on down the chain (`progress`: HandOn's). */
type StepCall = (
  input: GroupStepCall['input'],
  schedule: GroupStepCall['schedule'],
  trace: boolean,
  progress?: () => Promise<void>,
) => Promise<Failure | ({ ok: true } & GroupStepReply)>;

/**
 * The step's progress hook as the groups call it (HandOn.progress) and once more as the chain
 * answers: a group never sees the hook's error (the client left); `settle` throws it once the
 * chain has answered, and the job stops there.
 */
function progressHook(progress: (() => void | Promise<void>) | undefined): {
  hook?: () => Promise<void>;
  settle: () => Promise<void>;
} {
  if (!progress) return { settle: async () => undefined };
  const failed: { error?: unknown } = {};
  const hook = async () => {
    try {
      await progress();
    } catch (e) {
      if (!('error' in failed)) failed.error = e;
    }
  };
  return {
    hook,
    settle: async () => {
      await hook();
      if ('error' in failed) throw failed.error;
    },
  };
}

/** The front's embedding (EMBED_IN_FRONT): the frontier entering layer 0 for the new tokens. */
export type FrontEmbed = (start: number, tokens: readonly number[], ranking?: Ranking) => Promise<Frontier>;

/** The front's embedding when EMBED_IN_FRONT is set (the front part loads it with the tokenizer), else undefined. */
export function frontEmbed(env: ModelEnv): FrontEmbed | undefined {
  if (!configOf(env).split.frontEmbeds) return undefined;
  return async (start, tokens, ranking) => embedStep(await frontModel(env), start, tokens, ranking);
}

/** Classifier object k: the logits of its rows for the last token's hidden state. */
type HeadCall = (
  k: number,
  hidden: Float32Array,
) => Promise<Failure | { ok: true; rows: { start: number; logits: Float32Array }[] }>;

/** Two consecutive steps over the same layers as one step's figures: the work summed, the active set and caches as the later step left them. */
function addLayerStats(a: LayerStats, b: LayerStats): LayerStats {
  const sum = (x: number[], y: number[]) => x.map((v, i) => v + y[i]);
  return {
    computedPerLayer: sum(a.computedPerLayer, b.computedPerLayer),
    revivedPerLayer: sum(a.revivedPerLayer, b.revivedPerLayer),
    activePerLayer: b.activePerLayer,
    revived: a.revived + b.revived,
    auxEntries: b.auxEntries,
    kvEntries: b.kvEntries,
    flops: a.flops + b.flops,
    denseFlops: a.denseFlops + b.denseFlops,
  };
}

/** Runs steps through a chain of groups, and keeps the figures of what crossed their boundaries. */
export class ChainRunner {
  private bytes: number[] = [];
  /** chain steps each runner call took */
  private pieces: number[] = [];
  private last: StepStats | null = null;
  /** Date.now() of the last step's start (or of the runner's creation) */
  lastUse = Date.now();

  constructor(
    readonly groups: number,
    readonly config: ModelConfig,
    private readonly call: StepCall,
    readonly index?: number,
    readonly heads = 0,
    private readonly headCall?: HeadCall,
    private readonly embed?: FrontEmbed,
    /** a dense step of more tokens runs as steps of at most this many (PREFILL_STEP_TOKENS; 0: never cut) */
    private readonly stepTokens = 0,
  ) {}

  /** This chain as a job's runner (job/run.ts), continuing `seq` (tokens only: the caches live in the groups). */
  jobRunner(seq: SequenceState = this.frontState(), depthBefore?: Uint8Array): Runner {
    return { seq, step: this.runner, finish: (s) => this.fixStats(s), ...(depthBefore ? { depthBefore } : {}) };
  }

  /** A state for generate(): tokens only, since the caches live in the groups. */
  frontState(): SequenceState {
    return new SequenceState({ ...this.config, nLayers: 0 });
  }

  /**
   * The front state only records the tokens; each group receives where the step starts, and
   * truncates to it. With `stepTokens` (PREFILL_STEP_TOKENS), a dense step of more tokens runs as
   * consecutive steps of at most that many: what every object holds at once for a step (the
   * frontier in, the hidden states it computes, the frontier out) is then that many tokens' worth
   * instead of the whole prompt's. A lazy step is never cut: its pruning ranks every token by the
   * attention of the step's last one.
   */
  readonly runner: StepRunner = async (seq, newTokens, opts) => {
    const t0 = performance.now();
    this.lastUse = Date.now();
    // (A trace hook is then called for each piece's layers: what a session counts per layer sums.)
    const piece = this.stepTokens > 0 && opts.schedule === null ? this.stepTokens : newTokens.length;
    // A dense step cut into pieces ranks nothing: each piece keeps the default ranking of its own.
    if (piece < newTokens.length) opts = { ...opts, ranking: undefined };
    let r = await this.oneStep(seq, newTokens.slice(0, piece), opts);
    let { stats, moved } = r;
    let pieces = 1;
    for (let a = piece; a < newTokens.length; a += piece, pieces++) {
      r = await this.oneStep(seq, newTokens.slice(a, a + piece), opts);
      stats = stats.map((s, g) => addLayerStats(s, r.stats[g]));
      moved += r.moved;
    }
    this.bytes.push(moved);
    this.pieces.push(pieces);
    this.last = stepStats(this.config, newTokens.length, stats, performance.now() - t0);
    return { logits: r.logits, stats: this.last };
  };

  /** One step through every object (the engine's composeStep, the chain one stage reached by RPC): the last token's logits, each layer group's figures, and the bytes that crossed the boundaries. */
  private async oneStep(
    seq: SequenceState,
    newTokens: readonly number[],
    opts: Parameters<StepRunner>[2],
  ): Promise<{ logits: Float32Array; stats: LayerStats[]; moved: number }> {
    const start = seq.length;
    seq.append(newTokens);
    let moved = 0;
    // Frontiers cross in their wire form (frontier.ts): `moved` counts the front's into group 0, the
    // groups' to each other (handed_bytes), and the last group's as it comes back.
    const chain: Stage = async (input, o) => {
      const sent = 'frontier' in input ? { frontier: toWire(input.frontier) } : input;
      if ('frontier' in sent) moved += wireBytes(sent.frontier);
      const { hook, settle } = progressHook(o.progress);
      const r = unwrap<GroupStepReply>(await this.call(sent, o.schedule, o.trace !== undefined, hook));
      await settle();
      if (r.stats.length !== this.groups)
        throw new Error(`the chain answered the figures of ${r.stats.length} of its ${this.groups} layer groups`);
      for (const t of r.trace ?? []) o.trace?.(t.layer, t.queries, t.revived);
      moved += r.handed_bytes;
      if (!('frontier' in r.output)) return { output: r.output, stats: r.stats };
      moved += wireBytes(r.output.frontier);
      return { output: { frontier: fromWire(r.output.frontier) }, stats: r.stats };
    };
    const { logits, stats } = await composeStep([chain], start, newTokens, opts, {
      // The front holds the embedding: the first boundary is front -> group 0.
      ...(this.embed && { embed: this.embed }),
      ...(this.heads > 0 && { head: (leaving: Frontier) => this.headLogits(leaving, (b) => (moved += b)) }),
    });
    return { logits, stats, moved };
  }

  /** The classifier objects share the last token's hidden state and answer their rows at once. */
  private async headLogits(leaving: Frontier, count: (bytes: number) => void): Promise<Float32Array> {
    const h = lastHidden(leaving, this.config.dim).slice();
    const parts = await Promise.all(
      Array.from(
        { length: this.heads },
        async (_, k) => unwrap<{ rows: { start: number; logits: Float32Array }[] }>(await this.headCall!(k, h)).rows,
      ),
    );
    const logits = new Float32Array(this.config.vocabSize); // [vocab]
    let filled = 0;
    for (const r of parts.flat()) {
      logits.set(r.logits, r.start);
      filled += r.logits.length;
    }
    if (filled !== this.config.vocabSize)
      throw new Error(`the classifier objects answered ${filled} of ${this.config.vocabSize} rows`);
    count(h.byteLength * this.heads);
    return logits;
  }

  /** The generation's statistics with the caches' figures from the groups (the front state holds none). */
  fixStats(s: GenerationStats): GenerationStats & { split: SplitStats } {
    const last = this.last;
    const aux = last?.auxEntries ?? 0;
    const kv = last?.kvEntries ?? 0;
    const decode = this.bytes.slice(1);
    return {
      ...s,
      aux_entries: aux,
      aux_bytes: aux * this.config.dim * 4,
      kv_entries: kv,
      kv_bytes: kv * 2 * kvRowBytes(this.config.kvFormat ?? 'f32', this.config.kvDim),
      split: {
        groups: this.groups,
        heads: this.heads,
        ...(this.index === undefined ? {} : { chain: this.index }),
        prefill_boundary_bytes: this.bytes[0] ?? 0,
        decode_boundary_bytes_per_step: decode.length
          ? Math.round(decode.reduce((a, b) => a + b, 0) / decode.length)
          : 0,
        steps: this.bytes.length,
        prefill_steps: this.pieces[0] ?? 0,
      },
    };
  }
}

/** A pool chain held for one lease (a stateless request). */
export class Chain extends ChainRunner {
  readonly stubs: readonly GroupStub[];

  /** `names`: the instance names of the layer groups, then of the `heads` classifier objects. */
  constructor(
    env: Env,
    names: readonly string[],
    readonly lease: string,
    config: ModelConfig,
    index?: number,
    heads = 0,
    embed?: FrontEmbed,
    stepTokens = 0,
  ) {
    const G = names.length - heads;
    const frontEmbeds = embed !== undefined;
    const stubs = connect(env, names);
    const next = names.slice(1, G);
    super(
      G,
      config,
      (input, schedule, trace, progress) =>
        stubs[0].step({
          groups: G,
          group: 0,
          heads,
          frontEmbeds,
          lease,
          input,
          schedule,
          trace,
          next,
          ...(progress && { progress }),
        }),
      index,
      heads,
      (k, hidden) => stubs[G + k].head({ groups: G, group: G + k, heads }, hidden),
      embed,
      stepTokens,
    );
    this.stubs = stubs;
  }

  /** the holds started while the chain was being taken (objects loaded first must not be evicted while later ones load) */
  stopHolding: () => void = () => undefined;

  /** prompt tokens every group of the chain held when taken (the split prefix cache; 0: fresh states) */
  held = 0;

  /**
   * Frees the chain. `keep` (a finished request, prefix cache on): each group keeps its state if it
   * holds at most `upTo` bytes, and this isolate notes that the chain holds `tokens`.
   */
  async release(keep?: { tokens: readonly number[]; upTo: number }): Promise<void> {
    this.stopHolding();
    if (this.index !== undefined) {
      if (keep) chainHints.set(this.index, [...keep.tokens]);
      else chainHints.delete(this.index);
    }
    await Promise.all(this.stubs.map((s) => s.release(this.lease, keep?.upTo ?? 0).catch(() => undefined)));
  }
}

/**
 * What this front isolate last left in each pool chain (the split prefix cache): the tokens a
 * finished request's groups kept, by chain index. Only a routing hint: another front isolate may
 * have used the chain since; the groups compare the prompt with what they really hold (acquire).
 */
const chainHints = new Map<number, readonly number[]>();

/** The order to try the C chains in: from a random one, and with a prompt, those last left holding its longest prefix first. */
function chainOrder(C: number, prefix?: readonly number[]): number[] {
  const first = crypto.getRandomValues(new Uint32Array(1))[0] % C;
  const order = Array.from({ length: C }, (_, k) => (first + k) % C);
  if (!prefix) return order;
  const match = (c: number) => commonPrefix(chainHints.get(c) ?? [], prefix);
  return order.sort((a, b) => match(b) - match(a)); // stable: random among equals
}

/** How long one hold() call lasts before the front renews it (any length works; a short one ends sooner if the front dies). */
export const HOLD_MS = 30_000;

/**
 * Holds every object of `stubs` (each has a hold() call in flight, renewed every HOLD_MS) until the
 * returned stop is called, or until `lastUse()` is older than the lease idle time (a holder that
 * never released must not keep a chain forever). An object whose state lives only in memory may
 * be evicted once no call to it is in flight, and a chain's objects sit idle while the others
 * compute: in wrangler dev every idle object of a chain was evicted during a 13 s prefill, even
 * with a ping every 3 s (the layer-group-object.ts hold() comment says why).
 */
export function holdObjects(stubs: readonly GroupStub[], lastUse: () => number): () => void {
  const id = crypto.randomUUID();
  let stopped = false;
  for (const s of stubs) {
    void (async () => {
      while (!stopped && Date.now() - lastUse() <= LEASE_IDLE_MS) {
        try {
          await s.hold(id, HOLD_MS);
        } catch {
          return; // the object was reset: its next step says so
        }
      }
    })();
  }
  return () => {
    stopped = true;
    for (const s of stubs) s.unhold(id).catch(() => undefined);
  };
}

/** The instance names of stateless chain c's objects: its layer groups, then its classifier objects. */
export function poolNames(c: number, groups: number, heads = 0): string[] {
  return Array.from({ length: groups + heads }, (_, g) =>
    heads ? `pool/${c}/${groups}+${heads}/${g}` : `pool/${c}/${g}`,
  );
}

/** The stubs of a chain's objects by their instance names, object g in its own Worker when bound (stub.ts). */
export function connect(env: Env, names: readonly string[]): GroupStub[] {
  return names.map((name, g) => groupStub(env, g, name));
}

/** The objects of stateless chain c (poolNames). */
export function poolChain(env: Env, c: number, groups: number, heads = 0): GroupStub[] {
  return connect(env, poolNames(c, groups, heads));
}

/**
 * Takes a free chain of the pool for one request, starting from a random one. When every chain is
 * serving a request, the answer is a clear 503 with Retry-After: a request never waits behind
 * another one's whole generation, and never shares a chain's state. With `prefix` (the prompt, the
 * prefix cache on) the chains this isolate last left holding its longest prefix are tried first,
 * and `held` says how much of it every group of the taken chain still holds.
 */
export async function acquirePoolChain(env: Env, config: ModelConfig, prefix?: number[]): Promise<Chain> {
  const { groups: G, heads: H, chains: C, stepTokens } = configOf(env).split;
  const lease = crypto.randomUUID();
  const embed = frontEmbed(env);
  const frontEmbeds = embed !== undefined;
  for (const c of chainOrder(C, prefix)) {
    const chain = new Chain(env, poolNames(c, G, H), lease, config, c, H, embed, stepTokens);
    const { stubs } = chain;
    const taking = { groups: G, heads: H, frontEmbeds, lease, ...(prefix ? { prefix } : {}) };
    const head = await stubs[0].acquire({ ...taking, group: 0, exclusive: true });
    if (!head.ok) {
      if (head.error.code === 'chain_busy') continue;
      throw new Refusal(head);
    }
    chain.stopHolding = holdObjects(stubs, () => chain.lastUse);
    try {
      let held = head.held;
      for (let g = 1; g < G; g++)
        held = Math.min(
          held,
          unwrap<{ held: number }>(await stubs[g].acquire({ ...taking, group: g, exclusive: false })).held,
        );
      chain.held = held;
    } catch (e) {
      await chain.release();
      throw e;
    }
    chain.lastUse = Date.now();
    return chain;
  }
  const busy = failureOf(503, `All ${C} layer-group chains are serving other requests; retry shortly.`, 'server_busy');
  throw new Refusal(busy, retryHeaders(busy));
}
