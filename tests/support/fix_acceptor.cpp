// A FIX 4.4 acceptor on QuickFIX with an order-matching simulator, for the tests of the FIX
// venue. QuickFIX keeps the session (logon, heartbeats, sequence numbers in a file store that
// survives the initiator's restarts, resends with PossDupFlag); this program matches orders.
//
//   fix_acceptor PORT DIR [CERT KEY]   (CERT and KEY: TLS)
//
// Matching: every symbol trades at one price (`price SYMBOL P` sets it; 100 at first). A market
// order fills at it, in two trades when its quantity is over 0.1; a limit order fills at it
// when it crosses and rests otherwise (an ioc one is then canceled). A symbol named UNKNOWN is
// refused (OrdRejReason 1, unknown symbol).
//
// Commands on stdin, one per line: `hold` (orders are taken but not answered), `release [ID]`
// (answer the held orders, or one, now, logged on or not: QuickFIX keeps what it cannot send
// for the resend), `lose` (the next order is dropped on arrival, as if it never came),
// `require TAG` (orders without field TAG are refused by QuickFIX with a session-level Reject,
// 0 to stop),
// `refuse` (the next order gets a BusinessMessageReject, application not available), `drop`
// (close the connection), `dup` (send the last ExecutionReport again with PossDupFlag),
// `fill CLORDID` (fill a resting order at its limit), `price SYMBOL P`, `quit`.
// Events on stdout, one per line: `listening`, `logon`, `logout`, `order CLORDID SYMBOL`,
// `held CLORDID`, `lost CLORDID`, `refused CLORDID`, `cancel CLORDID`,
// `status CLORDID known|unknown`,
// `resend FROM` (the initiator asked for messages again), `asks FROM` (this side asked),
// `ok` (after each command).

#include <quickfix/Application.h>
#include <quickfix/FileLog.h>
#include <quickfix/FileStore.h>
#include <quickfix/Session.h>
#include <quickfix/SessionSettings.h>
#include <quickfix/SocketAcceptor.h>
#include <quickfix/SSLSocketAcceptor.h>

#include <cstdio>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace {

const long long SCALE = 100000000;  // 8 implied decimals

long long parse(const std::string& s) {
  long long whole = 0, frac = 0, digits = 0;
  bool neg = false, dot = false;
  for (char c : s) {
    if (c == '-') neg = true;
    else if (c == '.') dot = true;
    else if (!dot) whole = whole * 10 + (c - '0');
    else if (digits < 8) { frac = frac * 10 + (c - '0'); ++digits; }
  }
  while (digits < 8) { frac *= 10; ++digits; }
  long long v = whole * SCALE + frac;
  return neg ? -v : v;
}

std::string show(long long v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%lld.%08lld", v / SCALE, v % SCALE);
  std::string s(buf);
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s;
}

struct Order {
  std::string clordid, symbol, side, type, tif;
  long long qty = 0, price = 0, cum = 0, fill_px = 0;
  char status = '0';
  int orderid = 0;
};

std::mutex mu;
std::map<std::string, Order> orders;
std::vector<std::string> held;
bool holding = false;
bool losing = false;
bool refusing = false;
int required = 0;
std::map<std::string, long long> prices;
FIX::SessionID session;
FIX::Message last_report;
bool have_report = false;
int next_id = 1;

void say(const std::string& line) {
  std::cout << line << std::endl;
}

void report(Order& o, char exec_type, long long last_qty, long long last_px, int rej_reason = -1) {
  FIX::Message m;
  m.getHeader().setField(FIX::FIELD::MsgType, "8");
  m.setField(FIX::FIELD::OrderID, "V" + std::to_string(o.orderid));
  m.setField(FIX::FIELD::ExecID, "E" + std::to_string(next_id++));
  m.setField(FIX::FIELD::ClOrdID, o.clordid);
  m.setField(FIX::FIELD::ExecType, std::string(1, exec_type));
  m.setField(FIX::FIELD::OrdStatus, std::string(1, o.status));
  m.setField(FIX::FIELD::Symbol, o.symbol);
  m.setField(FIX::FIELD::Side, o.side);
  m.setField(FIX::FIELD::OrderQty, show(o.qty));
  long long open = (o.status == '0' || o.status == '1') ? o.qty - o.cum : 0;
  m.setField(FIX::FIELD::LeavesQty, show(open));
  m.setField(FIX::FIELD::CumQty, show(o.cum));
  // Every fill of an order is at one price here: the average is that price.
  m.setField(FIX::FIELD::AvgPx, o.cum > 0 ? show(o.fill_px) : "0");
  if (exec_type == 'F') {
    m.setField(FIX::FIELD::LastQty, show(last_qty));
    m.setField(FIX::FIELD::LastPx, show(last_px));
  }
  if (rej_reason >= 0) m.setField(FIX::FIELD::OrdRejReason, std::to_string(rej_reason));
  last_report = m;
  have_report = true;
  FIX::Session::sendToTarget(m, session);
}

void trade(Order& o, long long qty, long long px) {
  o.cum += qty;
  o.fill_px = px;
  o.status = o.cum >= o.qty ? '2' : '1';
  report(o, 'F', qty, px);
}

void match(Order& o) {
  if (o.symbol == "UNKNOWN") {
    o.status = '8';
    report(o, '8', 0, 0, 1);
    return;
  }
  long long px = prices.count(o.symbol) ? prices[o.symbol] : 100 * SCALE;
  o.status = '0';
  report(o, '0', 0, 0);
  bool buy = o.side == "1";
  if (o.type == "1") {
    if (o.qty > SCALE / 10) {
      long long half = o.qty / 2;
      trade(o, half, px);
      trade(o, o.qty - half, px);
    } else {
      trade(o, o.qty, px);
    }
    return;
  }
  bool crosses = buy ? o.price >= px : o.price <= px;
  if (crosses) {
    trade(o, o.qty, px);
  } else if (o.tif == "3") {
    o.status = '4';
    report(o, '4', 0, 0);
  }
}

class App : public FIX::Application {
 public:
  void onCreate(const FIX::SessionID& id) override { session = id; }
  void onLogon(const FIX::SessionID&) override { say("logon"); }
  void onLogout(const FIX::SessionID&) override { say("logout"); }
  void toAdmin(FIX::Message& m, const FIX::SessionID&) override {
    if (m.getHeader().getField(FIX::FIELD::MsgType) == "2") say("asks " + m.getField(FIX::FIELD::BeginSeqNo));
  }
  void toApp(FIX::Message&, const FIX::SessionID&) throw(FIX::DoNotSend) override {}
  void fromAdmin(const FIX::Message& m, const FIX::SessionID&)
      throw(FIX::FieldNotFound, FIX::IncorrectDataFormat, FIX::IncorrectTagValue, FIX::RejectLogon) override {
    if (m.getHeader().getField(FIX::FIELD::MsgType) == "2") say("resend " + m.getField(FIX::FIELD::BeginSeqNo));
  }
  void fromApp(const FIX::Message& m, const FIX::SessionID&)
      throw(FIX::FieldNotFound, FIX::IncorrectDataFormat, FIX::IncorrectTagValue, FIX::UnsupportedMessageType) override {
    std::lock_guard<std::mutex> lock(mu);
    std::string type = m.getHeader().getField(FIX::FIELD::MsgType);
    if (type == "D") {
      // IncorrectTagValue: QuickFIX answers with a session-level Reject (value is incorrect).
      if (required && !m.isSetField(required)) throw FIX::IncorrectTagValue(required);
      if (refusing) {
        refusing = false;
        FIX::Message r;
        r.getHeader().setField(FIX::FIELD::MsgType, "j");
        r.setField(FIX::FIELD::RefSeqNum, m.getHeader().getField(FIX::FIELD::MsgSeqNum));
        r.setField(FIX::FIELD::RefMsgType, "D");
        r.setField(FIX::FIELD::BusinessRejectRefID, m.getField(FIX::FIELD::ClOrdID));
        r.setField(FIX::FIELD::BusinessRejectReason, "4");
        r.setField(FIX::FIELD::Text, "trading is closed");
        FIX::Session::sendToTarget(r, session);
        say("refused " + m.getField(FIX::FIELD::ClOrdID));
        return;
      }
      Order o;
      o.clordid = m.getField(FIX::FIELD::ClOrdID);
      o.symbol = m.getField(FIX::FIELD::Symbol);
      o.side = m.getField(FIX::FIELD::Side);
      o.type = m.getField(FIX::FIELD::OrdType);
      o.qty = parse(m.getField(FIX::FIELD::OrderQty));
      o.tif = m.isSetField(FIX::FIELD::TimeInForce) ? m.getField(FIX::FIELD::TimeInForce) : "0";
      if (m.isSetField(FIX::FIELD::Price)) o.price = parse(m.getField(FIX::FIELD::Price));
      o.orderid = next_id++;
      o.status = 'A';
      say("order " + o.clordid + " " + o.symbol);
      if (losing) {
        losing = false;
        say("lost " + o.clordid);
        return;
      }
      orders[o.clordid] = o;
      if (holding) {
        held.push_back(o.clordid);
        say("held " + o.clordid);
      } else {
        match(orders[o.clordid]);
      }
    } else if (type == "F") {
      std::string orig = m.getField(FIX::FIELD::OrigClOrdID);
      auto it = orders.find(orig);
      if (it == orders.end() || !(it->second.status == '0' || it->second.status == '1')) {
        FIX::Message r;
        r.getHeader().setField(FIX::FIELD::MsgType, "9");
        r.setField(FIX::FIELD::OrderID, "NONE");
        r.setField(FIX::FIELD::ClOrdID, m.getField(FIX::FIELD::ClOrdID));
        r.setField(FIX::FIELD::OrigClOrdID, orig);
        r.setField(FIX::FIELD::OrdStatus, it == orders.end() ? "8" : std::string(1, it->second.status));
        r.setField(FIX::FIELD::CxlRejResponseTo, "1");
        r.setField(FIX::FIELD::CxlRejReason, it == orders.end() ? "1" : "0");
        FIX::Session::sendToTarget(r, session);
        say("cancel-reject " + orig);
        return;
      }
      it->second.status = '4';
      report(it->second, '4', 0, 0);
      say("cancel " + orig);
    } else if (type == "H") {
      std::string id = m.getField(FIX::FIELD::ClOrdID);
      auto it = orders.find(id);
      if (it == orders.end()) {
        Order unknown;
        unknown.clordid = id;
        unknown.symbol = m.getField(FIX::FIELD::Symbol);
        unknown.side = m.getField(FIX::FIELD::Side);
        unknown.status = '8';
        report(unknown, 'I', 0, 0, 5);
        say("status " + id + " unknown");
      } else {
        report(it->second, 'I', 0, 0);
        say("status " + id + " known");
      }
    } else {
      throw FIX::UnsupportedMessageType();
    }
  }
};

void command(const std::string& line) {
  std::istringstream in(line);
  std::string verb;
  in >> verb;
  std::lock_guard<std::mutex> lock(mu);
  if (verb == "hold") {
    holding = true;
  } else if (verb == "release") {
    std::string one;
    in >> one;
    std::vector<std::string> still;
    for (auto& id : held) {
      if (one.empty() || id == one) match(orders[id]);
      else still.push_back(id);
    }
    held = still;
    if (one.empty()) holding = false;
  } else if (verb == "lose") {
    losing = true;
  } else if (verb == "refuse") {
    refusing = true;
  } else if (verb == "require") {
    in >> required;
  } else if (verb == "drop") {
    if (auto* s = FIX::Session::lookupSession(session)) s->disconnect();
  } else if (verb == "dup") {
    if (have_report) {
      FIX::Message m = last_report;
      m.getHeader().setField(FIX::FIELD::PossDupFlag, "Y");
      m.getHeader().setField(FIX::OrigSendingTime(FIX::UtcTimeStamp()));
      FIX::Session::sendToTarget(m, session);
    }
  } else if (verb == "fill") {
    std::string id;
    in >> id;
    auto it = orders.find(id);
    if (it != orders.end() && (it->second.status == '0' || it->second.status == '1')) {
      trade(it->second, it->second.qty - it->second.cum, it->second.price);
    }
  } else if (verb == "price") {
    std::string symbol, p;
    in >> symbol >> p;
    prices[symbol] = parse(p);
  }
  say("ok");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 5) {
    std::cerr << "usage: fix_acceptor PORT DIR [CERT KEY]" << std::endl;
    return 2;
  }
  std::string port = argv[1], dir = argv[2];
  std::ostringstream cfg;
  cfg << "[DEFAULT]\nConnectionType=acceptor\nSocketAcceptPort=" << port << "\nSocketReuseAddress=Y\n"
      << "StartTime=00:00:00\nEndTime=00:00:00\nFileStorePath=" << dir << "/store\nFileLogPath=" << dir
      << "/log\nUseDataDictionary=N\nResetOnLogon=N\nResetOnLogout=N\nResetOnDisconnect=N\n"
      << "PersistMessages=Y\nCheckLatency=N\nSocketNodelay=Y\n";
  if (argc == 5) {
    cfg << "ServerCertificateFile=" << argv[3] << "\nServerCertificateKeyFile=" << argv[4]
        << "\nSSLProtocol=+TLSv1.2 +TLSv1.3\n";
  }
  cfg << "[SESSION]\nBeginString=FIX.4.4\nSenderCompID=VENUE\nTargetCompID=SG\n";
  std::istringstream settings_text(cfg.str());
  FIX::SessionSettings settings(settings_text);
  App app;
  FIX::FileStoreFactory store(settings);
  FIX::FileLogFactory log(settings);
  std::unique_ptr<FIX::Acceptor> acceptor;
  if (argc == 5) {
    acceptor.reset(new FIX::SSLSocketAcceptor(app, store, settings, log));
  } else {
    acceptor.reset(new FIX::SocketAcceptor(app, store, settings, log));
  }
  acceptor->start();
  say("listening");
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line == "quit") break;
    command(line);
  }
  acceptor->stop(true);
  return 0;
}
