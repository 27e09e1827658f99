'use strict';
// What both peers share: an HTTP server that takes quotes the way the node does
// (POST /v1/market/ticks with {"ticks":[{"symbol","bid","ask","ts"}]}) and hands each to
// `broadcast`, and the port it listens on (PORT, or a free one), printed once listening.
const http = require('http');

function feedServer(broadcast) {
  return http.createServer((req, res) => {
    if (req.method !== 'POST' || req.url !== '/v1/market/ticks') {
      res.writeHead(404, { 'content-type': 'application/json' });
      res.end('{"error":{"code":"not_found","message":"POST /v1/market/ticks only"}}');
      return;
    }
    const chunks = [];
    req.on('data', (c) => chunks.push(c));
    req.on('end', () => {
      let ticks;
      try {
        ticks = JSON.parse(Buffer.concat(chunks)).ticks;
        if (!Array.isArray(ticks)) throw new Error('no ticks array');
      } catch (e) {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ error: { code: 'body.invalid', message: String(e.message) } }));
        return;
      }
      for (const t of ticks) broadcast({ type: 'quote', symbol: t.symbol, bid: t.bid, ask: t.ask, ts: t.ts });
      res.writeHead(202, { 'content-type': 'application/json' });
      res.end(`{"accepted":${ticks.length}}`);
    });
  });
}

function listen(server, name) {
  server.listen(Number(process.env.PORT || 0), process.env.HOST || '127.0.0.1', () => {
    console.log(`${name} listening on ${server.address().address}:${server.address().port}`);
  });
}

module.exports = { feedServer, listen };
