'use strict';
// The broadcast server a team would write with `ws` 8: subscribers keyed by channel, each quote
// serialized once with JSON.stringify and sent to every subscriber of its symbol.
//   client → {"type":"subscribe","channels":["quotes:S01-USD", …]}
//   server → {"type":"subscribed","channels":[…]}, then {"type":"quote","symbol","bid","ask","ts"}
const { WebSocketServer } = require('ws');
const { feedServer, listen } = require('./feed');

const subscribers = new Map(); // channel → Set of sockets

const server = feedServer((quote) => {
  const set = subscribers.get(`quotes:${quote.symbol}`);
  if (!set) return;
  const text = JSON.stringify(quote);
  for (const ws of set) ws.send(text);
});

const wss = new WebSocketServer({ server, path: '/v1/ws', perMessageDeflate: false });
wss.on('connection', (ws) => {
  const mine = [];
  ws.on('message', (data) => {
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      ws.close(1007, 'bad JSON');
      return;
    }
    if (msg.type !== 'subscribe' || !Array.isArray(msg.channels)) {
      ws.send(JSON.stringify({ type: 'error', code: 'ws.unknown_message', message: 'subscribe only' }));
      return;
    }
    for (const c of msg.channels) {
      if (!subscribers.has(c)) subscribers.set(c, new Set());
      subscribers.get(c).add(ws);
      mine.push(c);
    }
    ws.send(JSON.stringify({ type: 'subscribed', channels: msg.channels }));
  });
  ws.on('close', () => {
    for (const c of mine) subscribers.get(c)?.delete(ws);
  });
});

listen(server, 'ws peer');
