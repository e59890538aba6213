/**
 * Where a group's object lives. In the multi-Worker topology (scripts/topology.ts, docs/TOPOLOGY.md)
 * every layer group and classifier group is a Worker script of its own, bound in the front as
 * `LAYER_GROUP_<g>` (a Durable Object namespace with `script_name`): that group's objects then run
 * in that Worker's isolates, which hold only its weights. Without such a binding (tests, the
 * single-Worker configuration) every group is an object of the front's own LayerGroup class
 * (LAYER_GROUP_OBJECTS), as before.
 */
import type { Env } from '../env.js';
import type { LayerGroup } from './layer-group-object.js';

export type GroupNamespace = DurableObjectNamespace<LayerGroup>;

/** The front's binding for object g of the split (layer groups first, then the classifier groups). */
export const groupBinding = (group: number): string => `LAYER_GROUP_${group}`;

/** The namespace holding object `group`'s instances: its own Worker's when bound, else the front's class. */
export function groupNamespace(env: Env, group: number): GroupNamespace {
  const own = (env as unknown as Record<string, unknown>)[groupBinding(group)] as GroupNamespace | undefined;
  return own ?? env.LAYER_GROUP_OBJECTS;
}

/** The stub of instance `name` of object `group`. */
export function groupStub(env: Env, group: number, name: string): DurableObjectStub<LayerGroup> {
  const ns = groupNamespace(env, group);
  return ns.get(ns.idFromName(name));
}
