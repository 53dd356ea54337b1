import { describe, expect, it } from 'vitest';
import { checkClientNumbers } from './options.js';

describe('checkClientNumbers', () => {
  it('names the option and the allowed range', () => {
    expect(() => checkClientNumbers({ 'shadowReads.sampleRate': { value: 0.5, min: 0, max: 1 }, timeoutMs: { value: undefined, min: 1, max: 10 } })).not.toThrow();
    expect(() => checkClientNumbers({ 'shadowReads.sampleRate': { value: 1.5, min: 0, max: 1 } })).toThrow('createKvClient: shadowReads.sampleRate is 1.5; allowed: a number from 0 to 1.');
    expect(() => checkClientNumbers({ blockingWaitSeconds: { value: Number.NaN, min: 1, max: 600 } })).toThrow(/blockingWaitSeconds is NaN/);
  });
});
