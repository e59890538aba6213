import { Hono } from 'hono';
import type { LoadedModel } from '../../../engine/model.js';
import type { AppEnv } from '../app-env.js';
import { heldModel } from '../../groups/parts.js';
import { servedModel } from '../respond.js';

/** OpenAI's model object, plus what a client of this server needs to know: context size and format. */
function describe(m: LoadedModel) {
  return {
    id: m.manifest.name,
    object: 'model' as const,
    created: 0,
    owned_by: 'lazy-edge',
    context_length: m.config.seqLen,
    synthetic: m.manifest.synthetic,
    quant: m.manifest.quant.format,
  };
}

/** GET /v1/models and GET /v1/models/{id}: the one model this Worker serves (MODEL_NAME); split, the front loads only its own pieces for it. */
export const models = new Hono<AppEnv>()
  .get('/', async (c) => c.json({ object: 'list', data: [describe(await heldModel(c.env))] }))
  .get('/:id', async (c) => c.json(describe(await servedModel(c.env, c.req.param('id')))));
