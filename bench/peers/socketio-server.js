'use strict';
// The broadcast server a team would write with Socket.IO 4.8: one room per channel, each quote
// emitted to its symbol's room (Socket.IO encodes a broadcast once for the room).
//   client → emit("subscribe", ["quotes:S01-USD", …])
//   server → emit("subscribed", […]), then emit("quote", {type, symbol, bid, ask, ts})
const { Server } = require('socket.io');
const { feedServer, listen } = require('./feed');

let io;
const server = feedServer((quote) => io.to(`quotes:${quote.symbol}`).emit('quote', quote));

io = new Server(server, { transports: ['websocket'], perMessageDeflate: false, serveClient: false });
io.on('connection', (socket) => {
  socket.on('subscribe', (channels) => {
    if (!Array.isArray(channels)) return;
    socket.join(channels);
    socket.emit('subscribed', channels);
  });
});

listen(server, 'socket.io peer');
