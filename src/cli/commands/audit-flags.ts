import { UsageError } from '../../errors.js';

/** Flag parsing shared by `audit`, `init` and `plan`. */

export function collect(value: string, previous: string[]): string[] {
  return [...previous, value];
}

export function wholeNumber(name: string, text: string | undefined, fallback: number, min = 0, max?: number): number {
  if (text === undefined) return fallback;
  // Digits only: Number() also takes "", "0x3" and "1e1".
  const n = /^\s*\d+\s*$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min) throw new UsageError('flag_invalid', `${name} must be a whole number ≥ ${min}, not ${JSON.stringify(text)}.`, { hint: `Pass ${name} <n>.` });
  if (max !== undefined && n > max) throw new UsageError('flag_invalid', `${name} must be at most ${max}, not ${text.trim()}.`, { hint: `Pass ${name} <n> with n from ${min} to ${max}.` });
  return n;
}

/** Keys per etcd page: memory holds a page or two of values (up to 1.5 MB each in etcd). */
export const MAX_PAGE_KEYS = 100_000;

/** `500ms`, `30s`, `2m`, `1h`, or a bare number of seconds → milliseconds. */
export function parseDuration(name: string, text: string | undefined): number | undefined {
  if (text === undefined) return undefined;
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)?$/.exec(text.trim());
  if (!match) throw new UsageError('flag_invalid', `${name} takes a duration such as 30s, 2m or 500ms, not ${JSON.stringify(text)}.`, { hint: `Pass ${name} 30s.` });
  const n = Number(match[1]);
  const unit = match[2] ?? 's';
  const ms = unit === 'ms' ? n : unit === 's' ? n * 1000 : unit === 'm' ? n * 60_000 : n * 3_600_000;
  if (ms <= 0 || ms > 24 * 3_600_000) throw new UsageError('flag_invalid', `${name} must be between 1ms and 24h, not ${text}.`, { hint: `Pass ${name} 30s.` });
  return Math.round(ms);
}
