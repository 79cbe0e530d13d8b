/**
 * Operations: `/healthz` (the process answers), `/readyz` (the database and every store
 * answer, the node holds its lease and is not draining: what a load balancer should route
 * on), Prometheus metrics at `/metrics` through prom-client (requests by route and status,
 * latency histograms, bytes in and out, uploads and exports in flight, the lease), and one
 * access event per request carrying the request id clients see (`x-openstack-request-id`).
 *
 * The three paths answer without a token, as Glance's healthcheck middleware does; they say
 * nothing about images.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { sql } from 'kysely';
import type * as Prom from 'prom-client';
import type { Services } from './context.js';
import { socketBytesWritten } from './image/zero-copy.js';
import type { NodeLease } from './nodes.js';

export interface AccessEvent {
  time: string;
  /** The node's instance id (the `nodes` table). */
  node: string;
  request_id: string;
  method: string;
  /** The route as registered (`/v2/images/:id/file`), or the path for the few outside it. */
  route: string;
  status: number;
  duration_ms: number;
  bytes_in: number;
  bytes_out: number;
  /** The response did not finish (client gone, connection cut). */
  aborted: boolean;
}

const UPLOAD_ROUTES = new Set(['/v2/images/:id/file', '/v2/images/:id/stage']);
const EXPORT_ROUTES = new Set(['/v2/images/:id/export', '/v2/download/:ticket']);

const isUpload = (method: string, route: string) => method === 'PUT' && UPLOAD_ROUTES.has(route);
const isExport = (method: string, route: string) =>
  (method === 'GET' && EXPORT_ROUTES.has(route)) || (method === 'GET' && route === '/v2/images/:id/file');

export class Ops {
  private draining = false;

  private constructor(
    private readonly svc: Services,
    private readonly lease: NodeLease,
    private readonly registry: Prom.Registry,
    private readonly m: {
      requests: Prom.Counter<'method' | 'route' | 'status'>;
      duration: Prom.Histogram<'method' | 'route'>;
      bytesIn: Prom.Counter;
      bytesOut: Prom.Counter;
      uploads: Prom.Gauge;
      exports: Prom.Gauge;
    },
    private readonly onAccess: ((e: AccessEvent) => void) | undefined,
  ) {}

  static async create(
    svc: Services,
    lease: NodeLease,
    onAccess: ((e: AccessEvent) => void) | undefined,
  ): Promise<Ops> {
    const prom = (await import('prom-client')).default;
    const registry = new prom.Registry();
    registry.setDefaultLabels({ node: lease.state.id });
    prom.collectDefaultMetrics({ register: registry, prefix: 'vdisk_' });
    const m = {
      requests: new prom.Counter({
        name: 'vdisk_http_requests_total',
        help: 'HTTP requests answered, by method, route and status',
        labelNames: ['method', 'route', 'status'] as const,
        registers: [registry],
      }),
      duration: new prom.Histogram({
        name: 'vdisk_http_request_duration_seconds',
        help: 'Time from a request to the end of its answer, by method and route',
        labelNames: ['method', 'route'] as const,
        buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 300],
        registers: [registry],
      }),
      bytesIn: new prom.Counter({
        name: 'vdisk_http_received_bytes_total',
        help: 'Bytes received from clients (requests and bodies)',
        registers: [registry],
      }),
      bytesOut: new prom.Counter({
        name: 'vdisk_http_sent_bytes_total',
        help: 'Bytes sent to clients (answers and image data)',
        registers: [registry],
      }),
      uploads: new prom.Gauge({
        name: 'vdisk_uploads_in_flight',
        help: 'Image data being received (PUT /file and /stage)',
        registers: [registry],
      }),
      exports: new prom.Gauge({
        name: 'vdisk_downloads_in_flight',
        help: 'Image data being sent (GET /file, exports and download tickets)',
        registers: [registry],
      }),
    };
    new prom.Gauge({
      name: 'vdisk_node_lease_held',
      help: '1 while this node holds its lease (it may write; other nodes leave its work alone)',
      registers: [registry],
      collect() {
        this.set(lease.state.held ? 1 : 0);
      },
    });
    new prom.Gauge({
      name: 'vdisk_node_lease_seconds',
      help: "The lease's length; renewed every third of it",
      registers: [registry],
      collect() {
        this.set(lease.state.leaseSeconds);
      },
    });
    new prom.Counter({
      name: 'vdisk_node_lease_renewal_failures_total',
      help: 'Lease renewals that failed (the database out of reach)',
      registers: [registry],
      collect() {
        this.reset();
        this.inc(lease.state.failures);
      },
    });
    return new Ops(svc, lease, registry, m, onAccess);
  }

  /** Stop answering ready (a draining node leaves the load balancer first). */
  drain(): void {
    this.draining = true;
  }

  /**
   * Count a request from now to the end of its answer; `matched` names its route once the
   * router has found it. Bytes are the socket's, as the request and its answer moved them.
   */
  track(req: IncomingMessage, res: ServerResponse): { matched(route: string): void } {
    const t0 = process.hrtime.bigint();
    const sock = req.socket;
    const read0 = sock.bytesRead;
    const written0 = socketBytesWritten(sock);
    const method = req.method ?? 'GET';
    let route = 'unmatched';
    let gauge: Prom.Gauge | null = null;
    let done = false;
    const end = () => {
      if (done) return;
      done = true;
      gauge?.dec();
      const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
      const bytesIn = Math.max(0, sock.bytesRead - read0);
      const bytesOut = Math.max(0, socketBytesWritten(sock) - written0);
      this.m.requests.inc({ method, route, status: String(res.statusCode) });
      this.m.duration.observe({ method, route }, seconds);
      this.m.bytesIn.inc(bytesIn);
      this.m.bytesOut.inc(bytesOut);
      this.onAccess?.({
        time: new Date().toISOString(),
        node: this.lease.state.id,
        request_id: String(res.getHeader('x-openstack-request-id') ?? ''),
        method,
        route,
        status: res.statusCode,
        duration_ms: Math.round(seconds * 1e6) / 1e3,
        bytes_in: bytesIn,
        bytes_out: bytesOut,
        aborted: !res.writableFinished,
      });
    };
    res.once('finish', end);
    res.once('close', end);
    return {
      matched: (r: string) => {
        if (done) return;
        route = r;
        gauge = isUpload(method, r) ? this.m.uploads : isExport(method, r) ? this.m.exports : null;
        gauge?.inc();
      },
    };
  }

  static readonly PATHS: ReadonlySet<string> = new Set(['/healthz', '/readyz', '/metrics']);

  /** Answer one of the three operations paths (Ops.PATHS). */
  async serve(path: string, res: ServerResponse): Promise<void> {
    if (path === '/healthz') {
      send(res, 200, 'text/plain; charset=utf-8', 'OK\n');
      return;
    }
    if (path === '/readyz') {
      const checks = await this.readiness();
      const ok = Object.values(checks).every((v) => v === 'ok');
      send(res, ok ? 200 : 503, 'application/json', `${JSON.stringify({ ready: ok, checks })}\n`);
      return;
    }
    send(res, 200, this.registry.contentType, await this.registry.metrics());
  }

  private async readiness(): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    const probe = async (name: string, p: () => Promise<unknown>) => {
      const timeout = new Promise<never>((_, reject) =>
        setTimeout(() => reject(new Error('no answer in 5 s')), 5000).unref(),
      );
      try {
        await Promise.race([p(), timeout]);
        out[name] = 'ok';
      } catch (err) {
        out[name] = (err as Error).message || 'failed';
      }
    };
    await probe('database', () => sql`SELECT 1`.execute(this.svc.db));
    const stores =
      this.svc.stores === null
        ? [{ id: 'store', store: this.svc.store }]
        : this.svc.stores.list.map((s) => ({ id: `store:${s.id}`, store: s.store }));
    // A key that never exists: the store answers "not found" when it is reachable.
    for (const s of stores) await probe(s.id, () => s.store.size('vdisk-readyz-probe'));
    out['lease'] = this.lease.state.held ? 'ok' : 'not held';
    out['draining'] = this.draining ? 'draining' : 'ok';
    return out;
  }
}

function send(res: ServerResponse, status: number, type: string, body: string): void {
  res.writeHead(status, {
    'Content-Type': type,
    'Content-Length': String(Buffer.byteLength(body)),
    'Cache-Control': 'no-store',
  });
  res.end(res.req.method === 'HEAD' ? undefined : body);
}
