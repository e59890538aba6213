/** Input and output names of the shards: the contract between the shard builder and the engine. */

/** Names of a decoder layer shard's inputs and outputs: the subset-of-tokens contract. */
export const LAYER_IO = {
  inputs: {
    x: 'x', //              [q, dim]   hidden states entering this layer, for the query tokens only
    pos: 'pos', //          [q]        positions of the query tokens (float32; exact below 2^24)
    // The context tokens' K/V (already computed at this layer) come in the KV cache's format: rows
    // in one of the three forms, the other two empty. Keys are [f32 rows..., f16 rows..., int8 rows...].
    pastK: 'past_k', //     [c32, kvDim] roped keys, f32
    pastV: 'past_v', //     [c32, kvDim] values, f32
    pastKF16: 'past_k_f16', //     [c16, kvDim] roped keys, float16
    pastVF16: 'past_v_f16', //     [c16, kvDim] values, float16
    pastKI8: 'past_k_i8', //       [c8, kvDim] roped keys, int8 ...
    pastKI8Scale: 'past_k_i8_scale', // [c8, 1] ... times one f32 scale per row
    pastVI8: 'past_v_i8', //       [c8, kvDim] values, int8 ...
    pastVI8Scale: 'past_v_i8_scale', // [c8, 1] ... times one f32 scale per row
    pastPos: 'past_pos', // [c]          positions of the context tokens, c = c32 + c16 + c8
    attnRows: 'attn_rows', // [2] int64  [from, to): the query rows of this run whose attention `attn` averages
  },
  outputs: {
    y: 'y', //              [q, dim]   hidden states leaving this layer
    k: 'k', //              [q, kvDim] roped keys of the query tokens, to append to the cache
    v: 'v', //              [q, kvDim] values of the query tokens
    attn: 'attn', //        [heads, c + q] attention probabilities of the attn_rows query rows, mean over
    //                                 those rows, per query head, over keys ordered [context..., queries...]
  },
} as const;

/** Token ids [q] (int64) -> embeddings x [q, dim]. */
export const EMBED_IO = { inputs: { ids: 'ids' }, outputs: { x: 'x' } } as const;
/** Hidden states x [q, dim] -> logits [q, vocab] (final RMSNorm + classifier). */
export const HEAD_IO = { inputs: { x: 'x' }, outputs: { logits: 'logits' } } as const;
