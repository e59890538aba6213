/**
 * GET /healthz: the served model, loaded as this isolate holds it, and what is true about memory.
 * Unsplit, that is the whole model. Split (LAYER_GROUPS > 1), the front holds only the tokenizer
 * (and with EMBED_IN_FRONT the embedding): a health check that loaded every layer would put the
 * whole model into the one isolate the split exists to keep it out of. What it reports then is
 * the front's own figures and the estimate for every object of the split (planSplit, the same
 * placement the groups load: placeSplit in src/engine/layer-group.ts).
 */
import { planSplit } from '../../engine/layer-group.js';
import { DEPLOYED_ISOLATE_MB, estimateMb, memoryReport } from '../model-store.js';
import { configOf } from '../config.js';
import { frontModel, heldModel } from '../groups/parts.js';
import type { Env } from '../env.js';
import { describeError, logFault } from '../faults.js';

/**
 * /healthz's answer: 200 with the figures when the model can be served; otherwise 503 with why, as
 * JSON (a configuration mistake, shards that cannot be read, a model too large for the memory
 * budget), never a bare 500. The reason is the operator's to read: it names variables and budgets,
 * never a secret.
 */
export async function healthResponse(env: Env): Promise<Response> {
  try {
    return Response.json(await health(env));
  } catch (e) {
    return unavailable(e);
  }
}

/** /healthz's 503: the reason the model cannot be served, for the operator (it names variables and budgets, never a secret). */
export function unavailable(e: unknown): Response {
  const f = describeError(e);
  const reason = e instanceof Error ? e.message : f.error.message;
  logFault({ status: 503, code: f.error.code }, e, 'GET /healthz');
  return Response.json(
    { status: 'unavailable', reason, error: { ...f.error, message: reason, type: 'server_error' } },
    { status: 503 },
  );
}

export async function health(env: Env) {
  const { groups: G, heads: H, frontEmbeds: embed } = configOf(env).split;
  if (G <= 1) {
    const model = await heldModel(env);
    return { status: 'ok' as const, model: model.manifest.name, memory: memoryReport(model) };
  }
  const front = await frontModel(env);
  const headRows = front.manifest.files.head.map((p) => p.rows);
  // planSplit lists the front only when it embeds; the front's own estimate is the same arithmetic either way.
  const objects = planSplit(front.config, front.quant, headRows, G, H, embed)
    .filter((p) => !p.front)
    .map((p, i) => ({
      object: i < G ? `layer group ${i}` : `classifier object ${i - G}`,
      layers: p.layers.end > p.layers.start ? [p.layers.start, p.layers.end - 1] : null,
      embed: p.embed,
      head_parts: p.head,
      estimate_mb: estimateMb(p.bytes),
    }));
  objects.push({ object: 'front', layers: null, embed, head_parts: [], estimate_mb: estimateMb(front.memory) });
  const largest = Math.max(...objects.map((o) => o.estimate_mb.total));
  return {
    status: 'ok' as const,
    model: front.manifest.name,
    // this isolate's: the front's estimate and what the runtime measures here
    memory: memoryReport(front),
    split: {
      layer_groups: G,
      head_groups: H,
      embed_in_front: embed,
      objects,
      max_object_estimate_mb: largest,
      fits_deployed_isolates: largest <= DEPLOYED_ISOLATE_MB,
    },
  };
}
