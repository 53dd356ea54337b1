import { describe, expect, it } from 'vitest';
import { formatKey } from './keys.js';
import { createValueHasher } from './hash.js';
import { redactUrl } from './redact.js';

describe('redaction', () => {
  it('removes credentials and token parameters from URLs', () => {
    expect(redactUrl('http://user:pa55word@etcd:2379')).toBe('http://etcd:2379');
    expect(redactUrl('http://consul:8500/?token=abc123&dc=dc1')).toBe('http://consul:8500/?token=redacted&dc=dc1');
    expect(redactUrl('http://127.0.0.1:8500')).toBe('http://127.0.0.1:8500');
    expect(redactUrl('not a url user:pw@host')).not.toContain('pw@');
  });
});

describe('keys as shown to people', () => {
  it('shows printable UTF-8 as is and escapes everything else', () => {
    expect(formatKey('/app/config/ünï')).toBe('/app/config/ünï');
    expect(formatKey(Buffer.from([0x2f, 0x61, 0xff, 0xfe, 0x00]))).toBe('/a\\xff\\xfe\\x00');
    expect(formatKey('a\nb\\c')).toBe('a\\x0ab\\x5cc');
    // Format characters would reorder or hide what follows on a terminal (U+202E shows the rest of the line reversed).
    expect(formatKey('/n/rtl\u202eabc')).toBe('/n/rtl\\xe2\\x80\\xaeabc');
    expect(formatKey('/n/zwj\u200dx/nbsp\u00a0/ls\u2028/fffd\ufffd')).toBe('/n/zwj\\xe2\\x80\\x8dx/nbsp\\xc2\\xa0/ls\\xe2\\x80\\xa8/fffd\\xef\\xbf\\xbd');
    // Letters with combining marks, and emoji, are printable.
    expect(formatKey('/n/e\u0301/\u{1f600}/日本')).toBe('/n/e\u0301/\u{1f600}/日本');
    // A space at either end would be invisible; one inside is shown as it is.
    expect(formatKey(' /app/end ')).toBe('\\x20/app/end\\x20');
    expect(formatKey('/app/a b')).toBe('/app/a b');
    expect(formatKey(' ')).toBe('\\x20');
    expect(formatKey('nb\u00a0sp')).toBe('nb\\xc2\\xa0sp');
  });
});

describe('keyed value hashes', () => {
  it('match equal values within one run and differ across runs', () => {
    const a = createValueHasher();
    const b = createValueHasher();
    expect(a(Buffer.from('true'))).toBe(a(Buffer.from('true')));
    expect(a(Buffer.from('true'))).not.toBe(a(Buffer.from('false')));
    expect(a(Buffer.from('true'))).not.toBe(b(Buffer.from('true')));
    expect(a(Buffer.from('x'))).toMatch(/^[0-9a-f]{16}$/);
  });
});
