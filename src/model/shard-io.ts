/** Input and output names of the shards: the contract between the shard builder and the engine. */

/** Names of a decoder layer shard's inputs and outputs: the subset-of-tokens contract. */
export const LAYER_IO = {
  inputs: {
    x: 'x', //              [q, dim]   hidden states entering this layer, for the query tokens only
    pos: 'pos', //          [q]        positions of the query tokens (float32; exact below 2^24)
    pastK: 'past_k', //     [c, kvDim] roped keys of the context tokens (already computed at this layer)
    pastV: 'past_v', //     [c, kvDim] values of the context tokens
    pastPos: 'past_pos', // [c]        positions of the context tokens
  },
  outputs: {
    y: 'y', //              [q, dim]   hidden states leaving this layer
    k: 'k', //              [q, kvDim] roped keys of the query tokens, to append to the cache
    v: 'v', //              [q, kvDim] values of the query tokens
    attnLast: 'attn_last', // [c + q]  last query row's attention probabilities, mean over heads,
    //                                 over keys ordered [context..., queries...]
  },
} as const;

/** Token ids [q] (int64) -> embeddings x [q, dim]. */
export const EMBED_IO = { inputs: { ids: 'ids' }, outputs: { x: 'x' } } as const;
/** Hidden states x [q, dim] -> logits [q, vocab] (final RMSNorm + classifier). */
export const HEAD_IO = { inputs: { x: 'x' }, outputs: { logits: 'logits' } } as const;
