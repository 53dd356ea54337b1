import { UsageError } from '../errors.js';

/** Refuses option values that cannot work, naming the option (pure). */
export function checkClientNumbers(values: Record<string, { value: number | undefined; min: number; max: number }>): void {
  for (const [name, { value, min, max }] of Object.entries(values)) {
    if (value === undefined) continue;
    if (!Number.isFinite(value) || value < min || value > max) {
      throw new UsageError('client_option_invalid', `createKvClient: ${name} is ${value}; allowed: a number from ${min} to ${max}.`, { details: { option: name, value } });
    }
  }
}
