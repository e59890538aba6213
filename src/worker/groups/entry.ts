/**
 * The entry module of a group Worker in the multi-Worker topology (scripts/topology.ts generates one
 * Worker per layer group and per classifier group; docs/TOPOLOGY.md). Each such Worker holds only its
 * group's shards as assets and exports its own LayerGroup Durable Object class, which the front binds
 * by `script_name` (stub.ts). Whatever instances Cloudflare co-locates in one of its isolates are
 * then instances of the same group: they share one copy of its weights (parts.ts loads each piece
 * once per isolate, at module scope) and hold only their own KV rows and Aux entries.
 *
 * The class here is the front's LayerGroup with one guard: a call addressed to another object of the
 * split, or to another split (a front or session configured differently), is refused with a clear
 * error instead of reaching for shards this Worker does not hold.
 */
import { failureOf, type Failure } from '../faults.js';
import type { Env } from '../env.js';
import { configOf } from '../config.js';
import { LayerGroup as FrontLayerGroup } from './layer-group-object.js';
import { partLoads } from './parts.js';
import type {
  GroupAddress,
  GroupStepCall,
  GroupStepReply,
  GroupSummary,
  IsolateProbe,
  Result,
  SessionGroupAddress,
  SessionStepCall,
} from './types.js';

declare global {
  namespace Cloudflare {
    interface Env {
      /** set in a group Worker of the topology (scripts/topology.ts): the index of the object it runs (layer groups, then classifier groups) */
      TOPOLOGY_OBJECT?: string;
      /** set in every Worker of the topology: this Worker's role, e.g. "front", "group 3 (layers 9-11)", "classifier 1" */
      TOPOLOGY_ROLE?: string;
    }
  }
}

/** What a group Worker's isolate holds, for tests and measurements (topologyProbe). */
export interface TopologyProbe extends IsolateProbe {
  /** the Worker's role in the topology (TOPOLOGY_ROLE) */
  role: string | null;
  /** the object index this Worker runs (TOPOLOGY_OBJECT) */
  object: number | null;
  /** model pieces this isolate loaded, by piece key, with how many times each (1: shared by every instance here) */
  loads: Record<string, number>;
}

type Address = Pick<GroupAddress, 'groups' | 'group' | 'heads' | 'frontEmbeds'>;

/** Why this Worker must not serve `a`, or null when it is the address it was generated for. */
export function misaddressed(env: Env, a: Address, checkEmbed = true): string | null {
  const own = env.TOPOLOGY_OBJECT;
  if (own === undefined || own.trim() === '') return null; // not a topology Worker: nothing to check against
  const { groups: G, heads: H, frontEmbeds } = configOf(env).split;
  const want = `object ${own} of ${G} layer groups + ${H} classifier groups`;
  const got = `object ${a.group} of ${a.groups} layer groups + ${a.heads ?? 0} classifier groups`;
  if (a.group !== Number(own) || a.groups !== G || (a.heads ?? 0) !== H)
    return `this Worker (${env.TOPOLOGY_ROLE ?? 'a group Worker'}) runs ${want}, but was called as ${got}: the front and the group Workers were generated from different topologies (regenerate and deploy them together: scripts/topology.ts)`;
  if (checkEmbed && (a.frontEmbeds ?? false) !== frontEmbeds)
    return `this Worker runs ${want} with EMBED_IN_FRONT ${frontEmbeds ? 1 : 0}, but was called with EMBED_IN_FRONT ${a.frontEmbeds ? 1 : 0}`;
  return null;
}

function refused(why: string): Failure {
  console.error(`topology: call refused: ${why}`);
  return failureOf(500, why, 'topology_mismatch');
}

export class LayerGroup extends FrontLayerGroup {
  override async head(
    a: Pick<GroupAddress, 'groups' | 'group' | 'heads'>,
    hidden: Float32Array,
  ): Promise<Result<{ rows: { start: number; logits: Float32Array }[] }>> {
    const why = misaddressed(this.env, a, false);
    return why ? refused(why) : super.head(a, hidden);
  }

  override async acquire(
    a: GroupAddress & { exclusive: boolean; prefix?: number[] },
  ): Promise<Result<{ loaded: boolean; held: number }>> {
    const why = misaddressed(this.env, a);
    return why ? refused(why) : super.acquire(a);
  }

  override async step(call: GroupStepCall): Promise<Result<GroupStepReply>> {
    const why = misaddressed(this.env, call);
    return why ? refused(why) : super.step(call);
  }

  override async turnStep(call: SessionStepCall): Promise<Result<GroupStepReply>> {
    const why = misaddressed(this.env, call);
    return why ? refused(why) : super.turnStep(call);
  }

  override async prepare(a: SessionGroupAddress): Promise<Result<{ delta_bytes: number }>> {
    const why = misaddressed(this.env, a);
    return why ? refused(why) : super.prepare(a);
  }

  override async summary(a: Omit<SessionGroupAddress, 'attempt'>): Promise<Result<{ summary: GroupSummary }>> {
    const why = misaddressed(this.env, a);
    return why ? refused(why) : super.summary(a);
  }

  /** probe() and what this isolate loaded, with this Worker's place in the topology. */
  async topologyProbe(): Promise<TopologyProbe> {
    const own = this.env.TOPOLOGY_OBJECT;
    return {
      ...(await this.probe()),
      role: this.env.TOPOLOGY_ROLE ?? null,
      object: own === undefined || own.trim() === '' ? null : Number(own),
      loads: partLoads(),
    };
  }
}

/**
 * A group Worker is reached only through its Durable Object binding (its configuration has no
 * public route: workers_dev = false); a request that reaches its fetch handler anyway learns only
 * what it is.
 */
export default {
  async fetch(_request: Request, env: Env): Promise<Response> {
    return Response.json(
      {
        error: {
          message: `This Worker runs ${env.TOPOLOGY_ROLE ?? 'a layer group'} of ${env.MODEL_NAME} for the lazy-edge front Worker, through its Durable Object binding only.`,
          type: 'invalid_request_error',
          param: null,
          code: 'not_found',
        },
      },
      { status: 404 },
    );
  },
} satisfies ExportedHandler<Env>;
