import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isMigrateError } from '../errors.js';
import { escapeKey, isServableKey, tryUnescapeKey, unescapeKey } from './escape.js';
import { isPrintableRune, PRINTABLE_RANGES } from './printable-runes.js';

const bytes = (text: string) => Buffer.from(text, 'utf8');

/**
 * Byte strings built from the pieces that matter to the codec, so that
 * slashes, dots, spaces, escape look-alikes and broken UTF-8 meet each other
 * far more often than in uniform random bytes.
 */
const FRAGMENTS: readonly Buffer[] = [
  '/', '//', '.', '..', ' ', '~', '%', '~2F', '~2f', '%20', '%2E', 'a', 'Z', '0', 'é', '中', '😀', '\u00a0', '\u2028', '\ufffd', '\u{1fae9}', '\x00', '\x7f', '\t',
].map((text) => bytes(text)).concat([Buffer.from([0xff]), Buffer.from([0xc3]), Buffer.from([0xed, 0xa0, 0x80]), Buffer.from([0xe2, 0x82])]);

const structuredBytes = fc.array(fc.constantFrom(...FRAGMENTS), { maxLength: 12 }).map((parts) => Buffer.concat(parts));
const anyBytes = fc.oneof(
  fc.uint8Array({ maxLength: 48 }).map((array) => Buffer.from(array)),
  structuredBytes,
);
/** Well-formed text made of the same pieces (for the "unchanged" property). */
const structuredText = fc.array(fc.constantFrom('/', '.', '..', ' ', '~', '%', '%41', 'a', 'b', '0', 'é', '😀', '\u00a0', '\ufffd', '\x01', '-'), { maxLength: 10 }).map((parts) => parts.join(''));
/** `to` prefixes the mapping accepts: servable and without `%`. */
const validTo = fc
  .array(fc.constantFrom('app', 'a', '/', '.', '..', '-', 'é', ' ', 'x.', '~', '😀'), { minLength: 1, maxLength: 6 })
  .map((parts) => parts.join(''))
  .filter((to) => isServableKey(to).ok && !to.includes('%'));

describe('escapeKey / unescapeKey', () => {
  it('round-trips every byte string exactly', () => {
    fc.assert(
      fc.property(anyBytes, (input) => {
        expect(unescapeKey(escapeKey(input)).equals(input)).toBe(true);
      }),
      { numRuns: 10_000 },
    );
  });

  it('gives distinct byte strings distinct escapes', () => {
    fc.assert(
      fc.property(anyBytes, anyBytes, (a, b) => {
        if (!a.equals(b)) expect(escapeKey(a)).not.toBe(escapeKey(b));
      }),
      { numRuns: 5_000 },
    );
    // Pairs rarely land near each other; a large batch of structured keys does.
    const seen = new Map<string, string>();
    for (const input of fc.sample(structuredBytes, 20_000)) {
      const escaped = escapeKey(input);
      const earlier = seen.get(escaped);
      if (earlier !== undefined) expect(earlier).toBe(input.toString('hex'));
      seen.set(escaped, input.toString('hex'));
    }
    expect(seen.size).toBeGreaterThan(5_000);
  });

  it('always writes a servable key, alone and after any valid to', () => {
    fc.assert(
      fc.property(anyBytes, validTo, (input, to) => {
        const escaped = escapeKey(input);
        expect(isServableKey(escaped)).toEqual({ ok: true });
        expect(isServableKey(to + escaped)).toEqual({ ok: true });
        expect(escaped).not.toContain('%');
      }),
      { numRuns: 10_000 },
    );
  });

  it('leaves a key unchanged exactly when it is servable and has no "~" or "%"', () => {
    fc.assert(
      fc.property(structuredText, (text) => {
        const needsNothing = isServableKey(text).ok && !text.includes('~') && !text.includes('%');
        expect(escapeKey(bytes(text)) === text).toBe(needsNothing);
      }),
      { numRuns: 10_000 },
    );
    expect(escapeKey(bytes('platform/config/auth_service/db_url'))).toBe('platform/config/auth_service/db_url');
    expect(escapeKey(bytes('app/café/中文/😀/a b/dir/'))).toBe('app/café/中文/😀/a b/dir/');
  });

  it('writes the documented escapes', () => {
    const cases: [Buffer, string][] = [
      [bytes('/legacy//double-slash'), '~2Flegacy/~2Fdouble-slash'],
      [bytes('legacy/./dot'), 'legacy/~2E/dot'],
      [bytes('a/../b'), 'a/~2E./b'],
      [bytes('a/.'), 'a/~2E'],
      [bytes('a/..'), 'a/~2E.'],
      [bytes('a/...'), 'a/...'],
      [bytes('a/.b/b.'), 'a/.b/b.'],
      [bytes('//'), '~2F~2F'],
      [bytes('a//'), 'a/~2F'],
      [bytes(''), '~'],
      [bytes(' a b '), '~20a b~20'],
      [bytes(' '), '~20'],
      [bytes('50%'), '50~25'],
      [bytes('a~b'), 'a~7Eb'],
      [bytes('~'), '~7E'],
      [Buffer.from([0x62, 0x69, 0x6e, 0xff, 0xfe]), 'bin~FF~FE'],
      [bytes('x\x00y\x7f'), 'x~00y~7F'],
      [bytes('nb\u00a0sp'), 'nb~C2~A0sp'],
      [bytes('line\u2028sep'), 'line~E2~80~A8sep'],
      [bytes('bad\ufffd'), 'bad~EF~BF~BD'],
      [bytes('new\u{1fae9}'), 'new~F0~9F~AB~A9'],
      [Buffer.from([0xed, 0xa0, 0x80]), '~ED~A0~80'],
      [Buffer.from([0xc0, 0xaf]), '~C0~AF'],
      [bytes('caf\u00e9'), 'café'],
    ];
    for (const [input, expected] of cases) {
      expect(escapeKey(input)).toBe(expected);
      expect(unescapeKey(expected).equals(input)).toBe(true);
    }
  });

  it('accepts only the canonical spelling', () => {
    for (const text of ['~2f', 'a~2fb', 'a~2Fb', '~41', 'a~', '~G0', '~7', '100%', ' a', 'a//b', '~25~', 'é~C3~A9', '\ud800', '~2E~2E']) {
      expect(tryUnescapeKey(text), text).toBeUndefined();
    }
    expect(tryUnescapeKey('a/~2Fb')?.toString()).toBe('a//b');
    expect(tryUnescapeKey('~2Fa')?.toString()).toBe('/a');
    expect(tryUnescapeKey('plain/key')?.toString()).toBe('plain/key');
    try {
      unescapeKey('~2f');
      expect.unreachable();
    } catch (err) {
      expect(isMigrateError(err) && err.code).toBe('escaped_key_invalid');
    }
  });
});

describe('isServableKey', () => {
  const reasonOf = (key: string) => {
    const check = isServableKey(key);
    return check.ok ? 'ok' : check.reason;
  };

  it('accepts what Consul serves, trailing "/" included', () => {
    for (const key of ['a', 'a/', 'a/b/', 'app/config.json', 'a..b/c', '..x/x..', 'a b', 'é/中/😀', '100%', '%zz%20', 'a%41', 'a~b', '.x', 'x/.hidden']) {
      expect(reasonOf(key), key).toBe('ok');
    }
  });

  it('names the first rule a key breaks', () => {
    const cases: [string, string][] = [
      ['', 'empty-key'],
      ['/a', 'leading-slash'],
      ['/', 'leading-slash'],
      ['a//b', 'empty-segment'],
      ['a//', 'empty-segment'],
      ['.', 'dot-segment'],
      ['a/./b', 'dot-segment'],
      ['a/..', 'dot-segment'],
      ['a/.', 'dot-segment'],
      ['../a', 'dot-segment'],
      ['a%2E%2E', 'dot-segment'],
      ['v1..2/%41', 'dot-segment'],
      ['a\ud800b', 'invalid-utf8'],
      ['a\udc00', 'invalid-utf8'],
      ['a\x00', 'control-character'],
      ['a\tb', 'control-character'],
      ['a\x7f', 'control-character'],
      ['a\u0085', 'control-character'],
      ['a\u00a0b', 'control-character'],
      ['a\u2028', 'control-character'],
      ['a\u200b', 'control-character'],
      ['a\ufeff', 'control-character'],
      ['a\ufffd', 'control-character'],
      ['a\u{1fae9}', 'control-character'],
      [' a', 'trailing-space'],
      ['a ', 'trailing-space'],
      ['a%20b', 'trailing-space'],
      // The first failing rule wins: invalid UTF-8 before structure.
      ['/a\ud800', 'invalid-utf8'],
      ['/a\x01', 'control-character'],
      ['/a//b', 'leading-slash'],
      ['a//./b ', 'empty-segment'],
    ];
    for (const [key, reason] of cases) expect(reasonOf(key), JSON.stringify(key)).toBe(reason);
  });

  it('agrees with the rules written out, on printable ASCII keys', () => {
    // The oracle: the module comment's rules, one by one, for keys without "%" (the table above covers percent-decoding).
    const oracle = (key: string): boolean => {
      if (key === '' || key.startsWith('/') || key.startsWith(' ') || key.endsWith(' ')) return false;
      const segments = key.split('/');
      if (segments.at(-1) === '') segments.pop();
      return segments.every((segment) => segment !== '' && segment !== '.' && segment !== '..');
    };
    const asciiKey = fc.array(fc.constantFrom('/', '//', '.', '..', ' ', 'a', 'b.', '.c', '-', '~'), { maxLength: 10 }).map((parts) => parts.join(''));
    fc.assert(fc.property(asciiKey, (key) => isServableKey(key).ok === oracle(key)), { numRuns: 5000 });
  });

  it('says where the problem is', () => {
    expect(isServableKey('ab\x01')).toEqual({ ok: false, reason: 'control-character', detail: 'character 3 is U+0001, which is not printable; Consul\'s HTTP API answers 400 for it' });
    expect(isServableKey('😀\u00a0')).toMatchObject({ detail: expect.stringContaining('character 2 is U+00A0') });
  });
});

describe('printable runes (Go unicode.IsPrint, Unicode 15.0.0)', () => {
  it('holds the whole table', () => {
    let total = 0;
    for (let i = 0; i < PRINTABLE_RANGES.length; i += 2) {
      expect(PRINTABLE_RANGES[i]!).toBeLessThanOrEqual(PRINTABLE_RANGES[i + 1]!);
      if (i > 0) expect(PRINTABLE_RANGES[i]!).toBeGreaterThan(PRINTABLE_RANGES[i - 1]! + 1);
      total += PRINTABLE_RANGES[i + 1]! - PRINTABLE_RANGES[i]! + 1;
    }
    // Go 1.26: 148,998 printable runes, 95 of them ASCII.
    expect(total).toBe(148_903);
  });

  it('matches Go on known runes', () => {
    const printable = [0x20, 0x41, 0x7e, 0xa1, 0xe9, 0x4e2d, 0x1f600, 0x1fae8, 0xfffd, 0x20000, 0xe0100];
    const notPrintable = [0x00, 0x1f, 0x7f, 0x80, 0x9f, 0xa0, 0xad, 0x1680, 0x2000, 0x200b, 0x2028, 0x2029, 0x202f, 0x3000, 0xd800, 0xe000, 0xfeff, 0x1fae9, 0x10ffff];
    for (const codePoint of printable) expect(isPrintableRune(codePoint), codePoint.toString(16)).toBe(true);
    for (const codePoint of notPrintable) expect(isPrintableRune(codePoint), codePoint.toString(16)).toBe(false);
  });
});
