/**
 * readBody (the upload's receive loop) over a real node:http server and client: every byte
 * arrives in order whether `take` returns at once or makes the stream wait (the request is
 * paused meanwhile, also for the last chunk before 'end'); what `take` throws rejects it and
 * the rest is left unread; a client gone mid-body resolves with `req.complete` false.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { readBody } from './data.js';

let server: Server | null = null;
afterEach(async () => {
  server?.closeAllConnections();
  await new Promise<void>((r) => (server === null ? r() : server.close(() => r())));
  server = null;
});

/** Start a server whose handler runs `onReq`, then send `body` to it (optionally cut short). */
async function exchange(onReq: (req: IncomingMessage) => Promise<string>, body: Buffer, cutAt?: number) {
  let answer: Promise<string> = Promise.resolve('');
  server = createServer((req, res) => {
    answer = onReq(req);
    answer.then(
      (t) => res.end(t),
      (e: Error) => {
        res.setHeader('Connection', 'close');
        res.statusCode = 413;
        res.end(e.message);
      },
    );
  });
  await new Promise<void>((r) => server!.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  const status = await new Promise<number>((resolve) => {
    const q = request(
      { port, host: '127.0.0.1', method: 'PUT', headers: { 'Content-Length': String(body.length) } },
      (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      },
    );
    q.on('error', () => resolve(-1));
    if (cutAt === undefined) q.end(body);
    else q.write(body.subarray(0, cutAt), () => setTimeout(() => q.destroy(), 50));
  });
  return { status, answer };
}

describe('readBody', () => {
  it('delivers every byte in order, waiting when take asks to', async () => {
    const body = randomBytes(3 << 20);
    let n = 0;
    const { status, answer } = await exchange(async (req) => {
      const got: Buffer[] = [];
      let waits = 0;
      await readBody(req, (b) => {
        got.push(Buffer.from(b));
        if (++n % 4 !== 0) return undefined;
        waits++;
        expect(req.isPaused()).toBe(false);
        return new Promise((r) => setTimeout(r, 5)).then(() => expect(req.isPaused()).toBe(true));
      });
      expect(req.complete).toBe(true);
      expect(waits).toBeGreaterThan(0);
      return Buffer.concat(got).equals(body) ? 'same' : 'different';
    }, body);
    expect(status).toBe(200);
    expect(await answer).toBe('same');
  });

  it("waits for the last chunk's promise before resolving", async () => {
    const body = randomBytes(1000);
    let settled = false;
    const { answer } = await exchange(async (req) => {
      await readBody(req, () =>
        new Promise<void>((r) => setTimeout(r, 30)).then(() => {
          settled = true;
        }),
      );
      return settled ? 'waited' : 'early';
    }, body);
    expect(await answer).toBe('waited');
  });

  it('rejects with what take threw and reads no further', async () => {
    const body = randomBytes(8 << 20);
    let seen = 0;
    const { status, answer } = await exchange(async (req) => {
      await readBody(req, (b) => {
        seen += b.length;
        if (seen > 100_000) throw new Error('too large');
        return undefined;
      });
      return 'accepted';
    }, body);
    await expect(answer).rejects.toThrow('too large');
    expect([413, -1]).toContain(status);
    expect(seen).toBeLessThan(body.length);
  });

  it('resolves with req.complete false when the client goes away mid-body', async () => {
    const body = randomBytes(4 << 20);
    const { answer } = await exchange(
      async (req) => {
        try {
          await readBody(req, () => undefined);
        } catch {
          return 'error';
        }
        return req.complete ? 'complete' : 'incomplete';
      },
      body,
      1 << 20,
    );
    expect(['incomplete', 'error']).toContain(await answer);
  });
});
