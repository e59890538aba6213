import { app } from './app.js';
import type { Env } from './env.js';

export default app satisfies ExportedHandler<Env>;
export { ChatSession } from './chat-session.js';
export { LayerGroup } from './groups/layer-group-object.js';
