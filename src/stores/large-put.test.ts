import { describe, expect, it } from 'vitest';
import { MemoryTarget } from './memory.js';
import { putLarge } from './large-put.js';

describe('putLarge', () => {
  const value = Buffer.from('large');

  it('frees a key of the session holding it, then locks it with the new one', async () => {
    const target = new MemoryTarget();
    const [a, b] = [await target.createSession({ name: 'a', ttlSeconds: 60 }), await target.createSession({ name: 'b', ttlSeconds: 60 })];
    await target.putKey('k', Buffer.from('old'), { acquire: a });
    expect(await putLarge(target, 'k', value, { release: a, acquire: b })).toBe(true);
    expect(await target.readKey('k')).toMatchObject({ value, session: b });
    // Freed only: the value written, no session holds it.
    expect(await putLarge(target, 'k', Buffer.from('free'), { release: b })).toBe(true);
    const freed = await target.readKey('k');
    expect(freed?.value.toString()).toBe('free');
    expect(freed?.session).toBeUndefined();
  });

  it('refuses (false, nothing written) to free a key another session holds; a cas write checks the index', async () => {
    const target = new MemoryTarget();
    const [a, b] = [await target.createSession({ name: 'a', ttlSeconds: 60 }), await target.createSession({ name: 'b', ttlSeconds: 60 })];
    await target.putKey('k', Buffer.from('old'), { acquire: a });
    expect(await putLarge(target, 'k', value, { release: b })).toBe(false);
    expect(await target.readKey('k')).toMatchObject({ value: Buffer.from('old'), session: a });
    expect(await putLarge(target, 'n', value, { cas: 5 })).toBe(false);
    expect(await target.readKey('n')).toBeUndefined();
    expect(await putLarge(target, 'n', value, { cas: 0 })).toBe(true);
  });
});
