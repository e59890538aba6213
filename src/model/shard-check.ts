/**
 * Structural check of a shard's weight tensors against the manifest's format and config, before
 * onnxruntime sees the graph. A mismatch (a scales tensor of the wrong length, int4 blocks of another
 * size, f32 weights in a shard the manifest calls int8) otherwise surfaces as an ORT error deep in
 * session creation, or, for an unfolded DequantizeLinear, only at the first run.
 */
import onnxProto from 'onnx-proto';
import type { ModelConfig } from './config.js';
import { ModelFormatError } from './errors.js';
import { GGUF_DEQUANT_KERNELS, type GgufKernels, type QuantSpec } from './quant.js';

const { onnx } = onnxProto;
const DT = onnx.TensorProto.DataType;

/** A weight matrix a shard must hold: [out, in] in llama2.c terms; names as src/shards/layer-graphs.ts emits them. */
export interface WeightSpec {
  name: string;
  out: number;
  inp: number;
}

export function layerWeightSpecs(c: ModelConfig): WeightSpec[] {
  return [
    { name: 'wqkv', out: c.dim + 2 * c.kvDim, inp: c.dim },
    { name: 'wo', out: c.dim, inp: c.dim },
    { name: 'w13', out: 2 * c.hiddenDim, inp: c.dim },
    { name: 'w2', out: c.dim, inp: c.hiddenDim },
  ];
}

/** The token embedding [rows, dim] of one part: f32, or int8 rows with one scale per row in every quantized format. */
export function embedWeightSpecs(c: ModelConfig, rows = c.vocabSize): WeightSpec[] {
  return [{ name: 'token_embedding', out: rows, inp: c.dim }];
}

export function headWeightSpecs(c: ModelConfig, rows = c.vocabSize): WeightSpec[] {
  return [{ name: 'wcls', out: rows, inp: c.dim }];
}

interface Expected {
  name: string;
  dataType: number;
  dims: number[];
  what: string;
}

const ELEM_BYTES: Record<number, number> = { [DT.FLOAT]: 4, [DT.INT8]: 1, [DT.UINT8]: 1 };
const TYPE_NAME: Record<number, string> = { [DT.FLOAT]: 'float32', [DT.INT8]: 'int8', [DT.UINT8]: 'uint8' };
/** Which op must consume the quantized tensor, per format/kernel. */
const CONSUMER: Record<string, string> = {
  'int8/dequant': 'DequantizeLinear',
  'int8/integer': 'MatMulInteger',
  'int4/dequant': 'Cast',
  'int4/nbits': 'MatMulNBits',
  'f32/matmul': 'MatMul',
};

function embedTensors(w: WeightSpec, q: QuantSpec): Expected[] {
  const { name, out: rows, inp: cols } = w;
  if (q.format === 'f32')
    return [{ name, dataType: DT.FLOAT, dims: [rows, cols], what: `float32 [${rows}, ${cols}] embeddings` }];
  return [
    { name: `${name}_q`, dataType: DT.INT8, dims: [rows, cols], what: `int8 [${rows}, ${cols}] embedding rows` },
    { name: `${name}_scale`, dataType: DT.FLOAT, dims: [rows], what: `${rows} float32 scales (one per row)` },
  ];
}

/**
 * A GGUF's matrices keep their own block type, which may differ per tensor, so the shard says which
 * encoding it holds: Q8_0 (int8 values), Q4_0/Q4_1 (uint8 nibble pairs) with per-block scales, or f32.
 */
function ggufTensorsOf(w: WeightSpec, inits: Map<string, onnxProto.onnx.ITensorProto>): Expected[] {
  const { name, out, inp } = w;
  const embed = name === 'token_embedding';
  const qs = inits.get(`${name}_qs`);
  if (!qs) {
    const dims = embed ? [out, inp] : [inp, out];
    return [{ name, dataType: DT.FLOAT, dims, what: `float32 [${dims.join(', ')}] weights, or ${name}_qs blocks` }];
  }
  const nb = inp / 32;
  const int8 = qs.dataType === DT.INT8;
  const scaleDims = embed ? [out, nb] : [out, nb, 1];
  const e: Expected[] = [
    embed
      ? { name: `${name}_qs`, dataType: DT.INT8, dims: [out, inp], what: `int8 [${out}, ${inp}] Q8_0 embedding rows` }
      : {
          name: `${name}_qs`,
          dataType: int8 ? DT.INT8 : DT.UINT8,
          dims: [out, nb, int8 ? 32 : 16],
          what: `${int8 ? 'int8' : 'uint8'} [${out}, ${nb}, ${int8 ? 32 : 16}] blocks of 32 inputs`,
        },
    { name: `${name}_d`, dataType: DT.FLOAT, dims: scaleDims, what: `float32 [${scaleDims.join(', ')}] block scales` },
  ];
  if (inits.has(`${name}_m`))
    e.push({
      name: `${name}_m`,
      dataType: DT.FLOAT,
      dims: scaleDims,
      what: `float32 [${scaleDims.join(', ')}] block minimums`,
    });
  return e;
}

/** Which group of a GGUF build's kernels a weight belongs to, by the names layer-graphs.ts gives them. */
function roleOf(name: string): keyof GgufKernels {
  if (name === 'token_embedding') return 'embed';
  if (name === 'wcls') return 'head';
  return name === 'wqkv' || name === 'wo' ? 'attn' : 'ffn';
}

/** The tensors and the consuming op a GGUF weight must have under its group's kernel (src/shards/ggml-kernels.ts). */
function ggufKernelTensors(
  w: WeightSpec,
  k: GgufKernels,
  inits: Map<string, onnxProto.onnx.ITensorProto>,
): { expected: Expected[]; consumer: string; bits?: number } {
  const { name, out, inp } = w;
  const kernel = k[roleOf(name)];
  const nb = inp / 32;
  const scales = (what: string, suffix = 'scales'): Expected => ({
    name: `${name}_${suffix}`,
    dataType: DT.FLOAT,
    dims: [out * nb],
    what: `${out * nb} float32 ${what} (${out} outputs x ${nb} blocks of 32)`,
  });
  switch (kernel) {
    case 'q4':
      return {
        consumer: 'Gather',
        expected: [
          {
            name: `${name}_q4`,
            dataType: DT.UINT8,
            dims: [out, nb, 16],
            what: `uint8 [${out}, ${nb}, 16] 4-bit embedding rows`,
          },
          { name: `${name}_d`, dataType: DT.FLOAT, dims: [out, nb], what: `float32 [${out}, ${nb}] block scales` },
          { name: `${name}_m`, dataType: DT.FLOAT, dims: [out, nb], what: `float32 [${out}, ${nb}] block minimums` },
        ],
      };
    case 'nbits':
      return {
        consumer: 'MatMulNBits',
        bits: 4,
        expected: [
          {
            name: `${name}_q4`,
            dataType: DT.UINT8,
            dims: [out, nb, 16],
            what: `uint8 [${out}, ${nb}, 16] MatMulNBits nibbles (blocks of 32)`,
          },
          scales('block scales'),
          {
            name: `${name}_zp`,
            dataType: DT.UINT8,
            dims: [out * Math.ceil(nb / 2)],
            what: `uint8 [${out * Math.ceil(nb / 2)}] packed zero points`,
          },
          {
            name: `${name}_mt`,
            dataType: DT.FLOAT,
            dims: [nb, out],
            what: `float32 [${nb}, ${out}] block minimums (the correction)`,
          },
        ],
      };
    case 'nbits-zp':
      return {
        consumer: 'MatMulNBits',
        bits: 4,
        expected: [
          {
            name: `${name}_q4`,
            dataType: DT.UINT8,
            dims: [out, nb, 16],
            what: `uint8 [${out}, ${nb}, 16] MatMulNBits nibbles (blocks of 32)`,
          },
          scales('block scales'),
          scales('float zero points', 'zpf'),
        ],
      };
    case 'nbits8':
      return {
        consumer: 'MatMulNBits',
        bits: 8,
        expected: [
          {
            name: `${name}_q8`,
            dataType: DT.UINT8,
            dims: [out, nb, 32],
            what: `uint8 [${out}, ${nb}, 32] 8-bit MatMulNBits blocks`,
          },
          scales('block scales'),
        ],
      };
    case 'integer':
    case 'integer2':
    case 'row':
    case 'row2':
    case 'rowx':
      return {
        consumer: 'MatMulInteger',
        expected: [
          { name: `${name}_q`, dataType: DT.INT8, dims: [inp, out], what: `int8 [${inp}, ${out}] weights` },
          {
            name: `${name}_scale`,
            dataType: DT.FLOAT,
            dims: [out],
            what: `${out} float32 scales (one per output channel)`,
          },
          ...(kernel !== 'integer'
            ? [
                {
                  name: `${name}_zq`,
                  dataType: DT.INT8,
                  dims: [out],
                  what: `${out} int8 zero points (one per output channel)`,
                },
              ]
            : []),
        ],
      };
    default: {
      const expected = ggufTensorsOf(w, inits);
      return {
        expected,
        consumer: name === 'token_embedding' ? 'Gather' : expected[0].name.endsWith('_qs') ? 'Cast' : 'MatMul',
      };
    }
  }
}

function tensorsOf(w: WeightSpec, q: QuantSpec, inits: Map<string, onnxProto.onnx.ITensorProto>): Expected[] {
  const { name, out, inp } = w;
  if (q.format === 'gguf') return ggufKernelTensors(w, q.gguf ?? GGUF_DEQUANT_KERNELS, inits).expected;
  if (name === 'token_embedding') return embedTensors(w, q);
  if (q.format === 'f32')
    return [{ name, dataType: DT.FLOAT, dims: [inp, out], what: `float32 [${inp}, ${out}] weights` }];
  if (q.format === 'int8') {
    return [
      { name: `${name}_q`, dataType: DT.INT8, dims: [inp, out], what: `int8 [${inp}, ${out}] weights` },
      {
        name: `${name}_scale`,
        dataType: DT.FLOAT,
        dims: [out],
        what: `${out} float32 scales (one per output channel)`,
      },
    ];
  }
  const bs = q.blockSize!;
  const nb = Math.ceil(inp / bs);
  return [
    {
      name: `${name}_q4`,
      dataType: DT.UINT8,
      dims: [out, nb, bs / 2],
      what: `uint8 [${out}, ${nb}, ${bs / 2}] packed int4 weights (blocks of ${bs})`,
    },
    {
      name: `${name}_scales`,
      dataType: DT.FLOAT,
      dims: [out * nb],
      what: `${out * nb} float32 scales (${out} outputs x ${nb} blocks of ${bs} inputs)`,
    },
  ];
}

const toNum = (d: number | { toNumber(): number }) => (typeof d === 'number' ? d : d.toNumber());

function elementCount(t: onnxProto.onnx.ITensorProto): number {
  const bytes = t.rawData?.length ?? 0;
  if (bytes > 0) return bytes / (ELEM_BYTES[t.dataType ?? -1] ?? 1);
  return t.floatData?.length ?? t.int32Data?.length ?? 0;
}

/** A shard's graph and its initializers by name (their raw data are views of `bytes`, not copies). */
export function decodeShard(
  file: string,
  bytes: Uint8Array,
): { model: onnxProto.onnx.ModelProto; inits: Map<string, onnxProto.onnx.ITensorProto> } {
  let model: onnxProto.onnx.ModelProto;
  try {
    model = onnx.ModelProto.decode(bytes);
  } catch (e) {
    throw new ModelFormatError(file, 'an ONNX model', `undecodable bytes (${(e as Error).message})`);
  }
  return { model, inits: new Map((model.graph?.initializer ?? []).map((t) => [t.name ?? '', t])) };
}

/** Throws a ModelFormatError naming the file, the tensor, what the manifest implies and what is there. */
export function checkShardWeights(file: string, bytes: Uint8Array, q: QuantSpec, weights: WeightSpec[]): void {
  const { model, inits } = decodeShard(file, bytes);
  const nodes = model.graph?.node ?? [];
  const label = q.gguf
    ? `gguf (${Object.entries(q.gguf)
        .map(([r, k]) => `${r}=${k}`)
        .join(', ')})`
    : `${q.format}${q.blockSize ? ` (block size ${q.blockSize})` : ''}`;
  for (const w of weights) {
    const expected = tensorsOf(w, q, inits);
    for (const e of expected) {
      const t = inits.get(e.name);
      if (!t) {
        const present = [...inits.keys()].filter((n) => n === w.name || n.startsWith(`${w.name}_`));
        throw new ModelFormatError(
          file,
          `${e.name}: ${e.what}, as the manifest's ${label} format implies`,
          present.length ? `only ${present.join(', ')}` : 'no such tensor',
        );
      }
      const dims = (t.dims ?? []).map(toNum);
      const n = e.dims.reduce((a, b) => a * b, 1);
      if (t.dataType !== e.dataType || dims.join(',') !== e.dims.join(',') || elementCount(t) !== n) {
        throw new ModelFormatError(
          file,
          `${e.name}: ${e.what}`,
          `${TYPE_NAME[t.dataType ?? -1] ?? `data type ${t.dataType}`} [${dims.join(', ')}] holding ${elementCount(t)} values`,
        );
      }
    }
    const stored = expected[0].name;
    const gguf = q.format === 'gguf' ? ggufKernelTensors(w, q.gguf ?? GGUF_DEQUANT_KERNELS, inits) : null;
    const want = gguf ? gguf.consumer : w.name === 'token_embedding' ? 'Gather' : CONSUMER[`${q.format}/${q.kernel}`];
    const kernelName = gguf ? `${roleOf(w.name)}=${(q.gguf ?? GGUF_DEQUANT_KERNELS)[roleOf(w.name)]}` : q.kernel;
    const consumer = nodes.find((nd) => nd.input?.includes(stored));
    if (consumer?.opType !== want) {
      throw new ModelFormatError(
        file,
        `${stored} consumed by ${want} (kernel ${kernelName})`,
        consumer ? `${consumer.opType}` : 'no consumer',
      );
    }
    if (want === 'MatMulNBits') {
      const attr = (k: string) => {
        const a = consumer.attribute?.find((x) => x.name === k);
        return a?.i === undefined || a.i === null ? undefined : toNum(a.i as number);
      };
      const found = { K: attr('K'), N: attr('N'), bits: attr('bits'), block_size: attr('block_size') };
      const expect = { K: w.inp, N: w.out, bits: gguf?.bits ?? 4, block_size: gguf ? 32 : q.blockSize };
      if (JSON.stringify(found) !== JSON.stringify(expect)) {
        throw new ModelFormatError(
          file,
          `MatMulNBits on ${stored} with ${JSON.stringify(expect)}`,
          JSON.stringify(found),
        );
      }
    }
  }
}
