/**
 * The Worker's configuration: every variable of wrangler.toml's [vars] and every secret, read and
 * checked here once per env object, as one typed record. wrangler.toml documents each variable;
 * README.md has them as one table. A value that is not what its variable takes is a deployment
 * mistake: a ConfigError naming the variable, which requests answer as 503 `server_misconfigured`
 * (faults.ts) rather than serving with a setting silently replaced by its default.
 */
import { isKvFormat, KV_FORMATS, type KvFormat } from '../engine/kv-rows.js';
import { MB } from '../engine/memory-budget.js';
import type { LoadOptions } from '../engine/model.js';
import type { Env } from './env.js';

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** How the served model's layers are split across Durable Objects (docs/LAYER-GROUPS.md). */
export interface SplitConfig {
  /** LAYER_GROUPS: contiguous groups of decoder layers, each its own object; 1 runs the whole model in the isolate that takes the request */
  groups: number;
  /** GROUP_CHAINS: chains of group objects serving stateless requests, one request per chain at a time */
  chains: number;
  /** HEAD_GROUPS: objects holding only classifier row parts, after the layer groups (0: the last layer group holds the classifier) */
  heads: number;
  /** EMBED_IN_FRONT: the front (Worker or ChatSession object) embeds the tokens; group 0 then holds no embedding */
  frontEmbeds: boolean;
  /** PREFILL_STEP_TOKENS: a dense prefill goes through the groups in steps of at most this many tokens (0: one step) */
  stepTokens: number;
}

export interface Config {
  /** MODEL_NAME: the served model, whose shards are the assets' <name>/ */
  modelName: string;
  /** MEMORY_BUDGET_MB ("off": none), CONTEXT_TOKENS and KV_FORMAT, as the model loader takes them */
  load: LoadOptions;
  /** ASSET_READ_MB_PER_S (local development only): paces shard reads (model-store.ts says why) */
  assetReadMbPerS: number | undefined;
  /** REQUEST_BUDGET_MS: no token is started after a request has run this long */
  requestBudgetMs: number;
  /** SESSION_TTL_SECONDS, in ms: a chat session idle this long is deleted */
  sessionTtlMs: number;
  /** STREAM_KEEPALIVE_MS: a prefilling stream sends a comment at most this often (0: at every progress point) */
  keepAliveMs: number;
  /** PREFIX_CACHE_MB, in bytes: recent stateless requests' states kept for reuse (0: off); docs/PREFIX-CACHE.md */
  prefixCacheBytes: number;
  split: SplitConfig;
  /** API_KEYS (secret): bearer tokens; empty = an open server */
  apiKeys: string[];
  /** CORS_ORIGINS: origins (lower case) allowed to call the API from a browser; empty = no CORS */
  corsOrigins: Set<string>;
}

export const DEFAULTS = {
  REQUEST_BUDGET_MS: 60_000,
  SESSION_TTL_SECONDS: 86_400,
  STREAM_KEEPALIVE_MS: 5_000,
  LAYER_GROUPS: 1,
  GROUP_CHAINS: 2,
  PREFIX_CACHE_MB: 256,
} as const;

type Vars = Partial<Env>;

const blank = (raw: string | undefined): raw is undefined => raw === undefined || raw.trim() === '';

function number(name: string, raw: string | undefined, ok: (n: number) => boolean, what: string): number | undefined {
  if (blank(raw)) return undefined;
  const n = Number(raw);
  if (!ok(n)) throw new ConfigError(`${name} must be ${what}, got "${raw}"`);
  return n;
}

const positive = (name: string, raw: string | undefined) => number(name, raw, (n) => n > 0, 'a positive number');
const milliseconds = (name: string, raw: string | undefined, fallback: number) =>
  number(name, raw, (n) => Number.isFinite(n) && n >= 0, 'a number of milliseconds >= 0') ?? fallback;
const count = (name: string, raw: string | undefined, fallback: number, min = 1) =>
  number(name, raw, (n) => Number.isInteger(n) && n >= min, `an integer >= ${min}`) ?? fallback;

function memoryBudgetBytes(raw: string | undefined): number | undefined {
  if (raw?.trim() === 'off') return Infinity;
  const mb = positive('MEMORY_BUDGET_MB', raw);
  return mb === undefined ? undefined : mb * MB;
}

function kvFormat(raw: string | undefined): KvFormat | undefined {
  if (blank(raw)) return undefined;
  if (!isKvFormat(raw.trim())) throw new ConfigError(`KV_FORMAT must be one of ${KV_FORMATS.join(', ')}, got "${raw}"`);
  return raw.trim() as KvFormat;
}

function flag(name: string, raw: string | undefined): boolean {
  const v = raw?.trim() ?? '';
  if (v !== '' && v !== '0' && v !== '1') throw new ConfigError(`${name} must be 0 or 1, got "${raw}"`);
  return v === '1';
}

const ORIGIN = /^https?:\/\/[^/\s]+$/;

function origins(raw: string | undefined): Set<string> {
  const list = (raw ?? '').split(/[\s,]+/).filter((s) => s !== '');
  for (const o of list)
    if (!ORIGIN.test(o))
      throw new ConfigError(
        `CORS_ORIGINS must list origins like https://example.com (no path, no wildcard), got "${o}"`,
      );
  return new Set(list.map((o) => o.toLowerCase()));
}

/** API_KEYS split on commas, blanks dropped. */
export function parseApiKeys(secret: string | undefined): string[] {
  return (secret ?? '')
    .split(',')
    .map((k) => k.trim())
    .filter(Boolean);
}

function read(env: Vars): Config {
  if (blank(env.MODEL_NAME)) throw new ConfigError('MODEL_NAME is not set: it names the served model (wrangler.toml)');
  return {
    modelName: env.MODEL_NAME,
    load: {
      memoryBudgetBytes: memoryBudgetBytes(env.MEMORY_BUDGET_MB),
      contextTokens: positive('CONTEXT_TOKENS', env.CONTEXT_TOKENS),
      kvFormat: kvFormat(env.KV_FORMAT),
    },
    assetReadMbPerS: positive('ASSET_READ_MB_PER_S', env.ASSET_READ_MB_PER_S),
    requestBudgetMs: milliseconds('REQUEST_BUDGET_MS', env.REQUEST_BUDGET_MS, DEFAULTS.REQUEST_BUDGET_MS),
    sessionTtlMs:
      1000 *
      (number(
        'SESSION_TTL_SECONDS',
        env.SESSION_TTL_SECONDS,
        (n) => Number.isFinite(n) && n > 0,
        'a number of seconds > 0',
      ) ?? DEFAULTS.SESSION_TTL_SECONDS),
    keepAliveMs: milliseconds('STREAM_KEEPALIVE_MS', env.STREAM_KEEPALIVE_MS, DEFAULTS.STREAM_KEEPALIVE_MS),
    prefixCacheBytes:
      MB *
      (number(
        'PREFIX_CACHE_MB',
        env.PREFIX_CACHE_MB,
        (n) => Number.isFinite(n) && n >= 0,
        'a number of MiB >= 0 (0: off)',
      ) ?? DEFAULTS.PREFIX_CACHE_MB),
    split: {
      groups: count('LAYER_GROUPS', env.LAYER_GROUPS, DEFAULTS.LAYER_GROUPS),
      chains: count('GROUP_CHAINS', env.GROUP_CHAINS, DEFAULTS.GROUP_CHAINS),
      heads: count('HEAD_GROUPS', env.HEAD_GROUPS, 0, 0),
      frontEmbeds: flag('EMBED_IN_FRONT', env.EMBED_IN_FRONT),
      stepTokens: count('PREFILL_STEP_TOKENS', env.PREFILL_STEP_TOKENS, 0, 0),
    },
    apiKeys: parseApiKeys(env.API_KEYS),
    corsOrigins: origins(env.CORS_ORIGINS),
  };
}

const seen = new WeakMap<object, Config>();

/** The configuration `env` holds, read once per env object (a Worker's env lives as long as its isolate). */
export function configOf(env: Vars): Config {
  let c = seen.get(env);
  if (!c) {
    c = read(env);
    seen.set(env, c);
  }
  return c;
}
