import type { Env } from './env.js';
import { getModel } from './model-store.js';

export default {
  async fetch(req: Request, env: Env): Promise<Response> {
    const model = await getModel(env.ASSETS, env.MODEL_NAME);
    return Response.json({ model: model.manifest.name });
  },
} satisfies ExportedHandler<Env>;
