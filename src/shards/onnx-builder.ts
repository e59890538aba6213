import onnxProto from 'onnx-proto';

const { onnx } = onnxProto;

export type Dim = number | string;
export type AttrValue = number | number[] | string | { float: number } | { floats: number[] };

const FLOAT = onnx.TensorProto.DataType.FLOAT;
const INT64 = onnx.TensorProto.DataType.INT64;
const INT8 = onnx.TensorProto.DataType.INT8;
const UINT8 = onnx.TensorProto.DataType.UINT8;
const INT32 = onnx.TensorProto.DataType.INT32;
const FLOAT16 = onnx.TensorProto.DataType.FLOAT16;

export const ElemType = {
  float32: FLOAT,
  float16: FLOAT16,
  int64: INT64,
  int8: INT8,
  uint8: UINT8,
  int32: INT32,
} as const;
export type ElemName = keyof typeof ElemType;

function valueInfo(name: string, elem: ElemName, dims: Dim[]): onnxProto.onnx.IValueInfoProto {
  return {
    name,
    type: {
      tensorType: {
        elemType: ElemType[elem],
        shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) },
      },
    },
  };
}

function attribute(name: string, v: AttrValue): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if (typeof v === 'string') return { name, type: T.STRING, s: new TextEncoder().encode(v) };
  if (typeof v === 'number') return { name, type: T.INT, i: v };
  if (Array.isArray(v)) return { name, type: T.INTS, ints: v };
  if ('float' in v) return { name, type: T.FLOAT, f: v.float };
  return { name, type: T.FLOATS, floats: v.floats };
}

function rawBytes(data: ArrayBufferView): Uint8Array {
  // A copy, so that later reuse of the caller's buffer cannot change a built graph.
  return new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength));
}

/**
 * A small imperative front end over onnx-proto: each `op` call appends one node and returns
 * fresh output names, so graph code reads like the math it implements.
 */
export class GraphBuilder {
  private readonly nodes: onnxProto.onnx.INodeProto[] = [];
  private readonly initializers: onnxProto.onnx.ITensorProto[] = [];
  private readonly inputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly outputs: onnxProto.onnx.IValueInfoProto[] = [];
  private readonly opsets = new Map<string, number>([['', 17]]);
  private counter = 0;

  constructor(private readonly name: string) {}

  input(name: string, elem: ElemName, dims: Dim[]): string {
    this.inputs.push(valueInfo(name, elem, dims));
    return name;
  }

  output(value: string, name: string, elem: ElemName, dims: Dim[]): void {
    this.op('Identity', [value], {}, { outputs: [name] });
    this.outputs.push(valueInfo(name, elem, dims));
  }

  tensor(name: string, elem: ElemName, dims: number[], data: ArrayBufferView): string {
    this.initializers.push({ name, dims, dataType: ElemType[elem], rawData: rawBytes(data) });
    return name;
  }

  f32(name: string, dims: number[], data: Float32Array | number[]): string {
    return this.tensor(name, 'float32', dims, data instanceof Float32Array ? data : new Float32Array(data));
  }

  i64(name: string, values: number[]): string {
    return this.tensor(name, 'int64', [values.length], BigInt64Array.from(values.map(BigInt)));
  }

  scalar(name: string, value: number): string {
    return this.tensor(name, 'float32', [], new Float32Array([value]));
  }

  op(
    opType: string,
    inputs: string[],
    attrs: Record<string, AttrValue> = {},
    opts: { outputs?: string[] | number; domain?: string } = {},
  ): string {
    return this.opN(opType, inputs, attrs, opts)[0];
  }

  opN(
    opType: string,
    inputs: string[],
    attrs: Record<string, AttrValue> = {},
    opts: { outputs?: string[] | number; domain?: string } = {},
  ): string[] {
    const outputs = Array.isArray(opts.outputs)
      ? opts.outputs
      : Array.from({ length: opts.outputs ?? 1 }, (_, i) => `${opType.toLowerCase()}_${this.counter}_${i}`);
    const domain = opts.domain ?? '';
    if (domain && !this.opsets.has(domain)) this.opsets.set(domain, 1);
    this.nodes.push({
      opType,
      domain,
      name: `${opType}_${this.counter++}`,
      input: inputs,
      output: outputs,
      attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)),
    });
    return outputs;
  }

  toBytes(): Uint8Array {
    const model = onnx.ModelProto.create({
      irVersion: 8,
      producerName: 'lazy-edge',
      opsetImport: [...this.opsets].map(([domain, version]) => ({ domain, version })),
      graph: {
        name: this.name,
        node: this.nodes,
        initializer: this.initializers,
        input: this.inputs,
        output: this.outputs,
      },
    });
    return onnx.ModelProto.encode(model).finish();
  }
}
