import { app } from './http/app.js';
import type { Env } from './env.js';

export default app satisfies ExportedHandler<Env>;
export { ChatSession } from './session/chat-session.js';
export { LayerGroup } from './groups/layer-group-object.js';
