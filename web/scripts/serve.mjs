// Development server: serves dist/ and passes every other request (the API, including the event
// stream) to the gateway, so the page and the API share one origin as they do behind the gateway.
//
//   ROOMBOOK_API=http://127.0.0.1:8088 PORT=5173 node scripts/serve.mjs
//
// With DATA_DIR set (a scripts/run data dir) it also answers the dev sign-in
// `GET /dev/token?user=ID&admin=true|false` → {"token": "..."} by running
// `roombook-gateway mint-token` with that data dir's JWT secret. Local development only.
import { createServer, request } from 'node:http';
import { createReadStream, existsSync, readFileSync, statSync } from 'node:fs';
import { execFileSync } from 'node:child_process';
import { dirname, extname, join, normalize } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const dist = join(root, 'dist');
const api = new URL(process.env.ROOMBOOK_API ?? 'http://127.0.0.1:8088');
const port = Number(process.env.PORT ?? 5173);
const dataDir = process.env.DATA_DIR;
const gatewayBin = process.env.ROOMBOOK_GATEWAY_BIN ?? join(root, '..', 'target', 'debug', 'roombook-gateway');
const types = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.css': 'text/css; charset=utf-8',
  '.map': 'application/json', '.svg': 'image/svg+xml', '.png': 'image/png', '.ico': 'image/x-icon',
};

function staticFile(pathname) {
  const rel = pathname === '/' ? 'index.html' : normalize(decodeURIComponent(pathname)).replace(/^([/\\])+/, '');
  if (rel.startsWith('..')) return null;
  const file = join(dist, rel);
  return existsSync(file) && statSync(file).isFile() ? file : null;
}

function devToken(url, res) {
  const user = url.searchParams.get('user') ?? '';
  if (!dataDir || !/^[A-Za-z0-9._-]{1,64}$/.test(user)) {
    res.writeHead(404, { 'content-type': 'application/problem+json' });
    res.end(JSON.stringify({ type: '/problems/not-found', title: 'Not Found', status: 404, detail: 'dev tokens are not enabled' }));
    return;
  }
  const args = ['mint-token', '--user', user, '--email', `${user}@example.com`];
  if (url.searchParams.get('admin') === 'true') args.push('--admin');
  const secret = readFileSync(join(dataDir, 'jwt-secret'), 'utf8').trim();
  const out = execFileSync(gatewayBin, args, { env: { ...process.env, JWT_SECRET: secret }, encoding: 'utf8' });
  const token = out.trim().split('\n').pop();
  res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify({ token }));
}

createServer((req, res) => {
  const url = new URL(req.url ?? '/', 'http://localhost');
  if (req.method === 'GET' && url.pathname === '/dev/token') return devToken(url, res);
  const file = req.method === 'GET' ? staticFile(url.pathname) : null;
  if (file) {
    res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream', 'cache-control': 'no-cache' });
    createReadStream(file).pipe(res);
    return;
  }
  const upstream = request({
    host: api.hostname, port: api.port, method: req.method, path: req.url,
    headers: { ...req.headers, host: api.host },
  }, up => {
    res.writeHead(up.statusCode ?? 502, up.headers);
    res.flushHeaders();
    up.pipe(res);
  });
  upstream.on('error', () => {
    if (!res.headersSent) res.writeHead(502, { 'content-type': 'application/problem+json' });
    res.end(JSON.stringify({ title: 'Bad Gateway', status: 502, detail: 'the gateway cannot be reached' }));
  });
  res.on('close', () => upstream.destroy());
  req.pipe(upstream);
}).listen(port, '127.0.0.1', () => console.log(`web: http://127.0.0.1:${port} (API ${api.origin})`));
