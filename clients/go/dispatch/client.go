package dispatch

import (
	"context"
	"hash/crc32"
	"time"

	"google.golang.org/grpc"

	pb "dispatch.example/client/dispatchv1"
)

// Client calls one Dispatch server (or one node of a cluster). It is safe for
// concurrent use; Close it when done.
type Client struct {
	conn     *grpc.ClientConn
	dispatch pb.DispatchClient
	admin    pb.AdminClient
	cluster  pb.ClusterClient
	timeout  time.Duration
}

// Dial connects to target (host:port, or any gRPC target such as
// "dns:///dispatch.internal:50051"). Without WithBlock it returns at once and
// connects on the first call; ctx then only matters with WithBlock.
func Dial(ctx context.Context, target string, opts ...Option) (*Client, error) {
	s := settings{timeout: DefaultTimeout}
	for _, opt := range opts {
		opt(&s)
	}
	conn, err := grpc.DialContext(ctx, target, s.grpcOptions()...)
	if err != nil {
		return nil, FromError(err)
	}
	return newClient(conn, s.timeout), nil
}

// NewClient wraps a connection made by the caller. timeout bounds each unary
// call as WithTimeout does (0: no bound). Close closes conn.
func NewClient(conn *grpc.ClientConn, timeout time.Duration) *Client {
	return newClient(conn, timeout)
}

func newClient(conn *grpc.ClientConn, timeout time.Duration) *Client {
	return &Client{
		conn:     conn,
		dispatch: pb.NewDispatchClient(conn),
		admin:    pb.NewAdminClient(conn),
		cluster:  pb.NewClusterClient(conn),
		timeout:  timeout,
	}
}

// Close closes the connection; calls in progress fail with codes.Canceled.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying connection.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// DispatchStub is the generated Dispatch stub, for the calls this package does
// not wrap (DispatchStream, OperateStream). Its errors are plain gRPC status
// errors: FromError turns them into *Error.
func (c *Client) DispatchStub() pb.DispatchClient { return c.dispatch }

// AdminStub is the generated Admin stub (see DispatchStub).
func (c *Client) AdminStub() pb.AdminClient { return c.admin }

func (c *Client) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout <= 0 {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, c.timeout)
}

// unary runs one call under the client's timeout and converts its error.
func unary[Req, Resp any](c *Client, ctx context.Context, call func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	ctx, cancel := c.bound(ctx)
	defer cancel()
	resp, err := call(ctx, req)
	if err != nil {
		var zero Resp
		return zero, FromError(err)
	}
	return resp, nil
}

// ---------------------------------------------------------------- Dispatch

// Dispatch routes one new conversation: the agent that receives it, or where it
// waits (REASON_QUEUED with its position, ...). A retry of an open
// conversation with the same buyer is answered with what is current for it.
func (c *Client) Dispatch(ctx context.Context, req *pb.DispatchRequest) (*pb.DispatchResponse, error) {
	return unary(c, ctx, c.dispatch.Dispatch, req)
}

// DispatchBatch routes up to 4096 conversations in one call, in order, and
// answers one response per request. A bad item does not fail the call: its
// response carries the error (FromStatus(resp.GetError()) is its *Error).
func (c *Client) DispatchBatch(ctx context.Context, reqs []*pb.DispatchRequest) ([]*pb.DispatchResponse, error) {
	resp, err := unary(c, ctx, c.dispatch.DispatchBatch, &pb.DispatchBatchRequest{Requests: reqs})
	if err != nil {
		return nil, err
	}
	return resp.GetResponses(), nil
}

// SetPresence records an agent's presence; the answer lists the hand-outs it caused.
func (c *Client) SetPresence(ctx context.Context, req *pb.SetPresenceRequest) (*pb.SetPresenceResponse, error) {
	return unary(c, ctx, c.dispatch.SetPresence, req)
}

// ReportConversation reports a conversation event (buyer message, agent reply,
// close, transfer, outside assignment); the answer lists the hand-outs it caused.
func (c *Client) ReportConversation(ctx context.Context, req *pb.ReportConversationRequest) (*pb.ReportConversationResponse, error) {
	return unary(c, ctx, c.dispatch.ReportConversation, req)
}

// ClaimFromPool gives an agent the next (or the named) conversation of the
// shop's message pool; FAILED_PRECONDITION when the pool is empty.
func (c *Client) ClaimFromPool(ctx context.Context, req *pb.ClaimFromPoolRequest) (*pb.ClaimFromPoolResponse, error) {
	return unary(c, ctx, c.dispatch.ClaimFromPool, req)
}

// Operate applies up to 4096 operations of any kind, in order, and answers one
// result per operation. A failed operation changes nothing and does not stop
// the rest: FromStatus(result.GetError()) is its *Error.
func (c *Client) Operate(ctx context.Context, ops []*pb.Operation) ([]*pb.OperationResult, error) {
	resp, err := unary(c, ctx, c.dispatch.Operate, &pb.OperateRequest{Operations: ops})
	if err != nil {
		return nil, err
	}
	return resp.GetResults(), nil
}

// ---------------------------------------------------------------- Admin

// PutShop creates or replaces a shop and answers the stored configuration,
// every default applied.
func (c *Client) PutShop(ctx context.Context, shop *pb.ShopConfig) (*pb.ShopConfig, error) {
	resp, err := unary(c, ctx, c.admin.PutShop, &pb.PutShopRequest{Shop: shop})
	if err != nil {
		return nil, err
	}
	return resp.GetShop(), nil
}

// DeleteShop deletes a shop (FAILED_PRECONDITION while it has conversations).
func (c *Client) DeleteShop(ctx context.Context, shopID string) error {
	_, err := unary(c, ctx, c.admin.DeleteShop, &pb.DeleteShopRequest{ShopId: shopID})
	return err
}

// PutAgent creates or replaces an agent of an existing shop.
func (c *Client) PutAgent(ctx context.Context, agent *pb.Agent) error {
	_, err := unary(c, ctx, c.admin.PutAgent, &pb.PutAgentRequest{Agent: agent})
	return err
}

// DeleteAgent deletes an agent and removes it from its groups.
func (c *Client) DeleteAgent(ctx context.Context, shopID, agentID string) error {
	_, err := unary(c, ctx, c.admin.DeleteAgent, &pb.DeleteAgentRequest{ShopId: shopID, AgentId: agentID})
	return err
}

// PutGroup creates or replaces a group.
func (c *Client) PutGroup(ctx context.Context, group *pb.Group) error {
	_, err := unary(c, ctx, c.admin.PutGroup, &pb.PutGroupRequest{Group: group})
	return err
}

// DeleteGroup deletes a group; its members stay agents of the shop.
func (c *Client) DeleteGroup(ctx context.Context, shopID, groupID string) error {
	_, err := unary(c, ctx, c.admin.DeleteGroup, &pb.DeleteGroupRequest{ShopId: shopID, GroupId: groupID})
	return err
}

// GetShopState is everything about a shop's routing: agents with presence and
// loads, groups, queue, staging, pool, settings. The agents of a shop too big
// for one answer come in pages; GetShopState reads them all (in agent_id order
// then) and answers them in one ShopState.
func (c *Client) GetShopState(ctx context.Context, shopID string) (*pb.ShopState, error) {
	req := &pb.GetShopStateRequest{ShopId: shopID}
	state, err := unary(c, ctx, c.admin.GetShopState, req)
	if err != nil {
		return nil, err
	}
	for token := state.GetNextPageToken(); token != ""; {
		page, err := unary(c, ctx, c.admin.GetShopState, &pb.GetShopStateRequest{ShopId: shopID, PageToken: token})
		if err != nil {
			return nil, err
		}
		state.Agents = append(state.Agents, page.GetAgents()...)
		token = page.GetNextPageToken()
	}
	state.NextPageToken = ""
	return state, nil
}

// ListShops answers the ids of every shop, sorted.
func (c *Client) ListShops(ctx context.Context) ([]string, error) {
	resp, err := unary(c, ctx, c.admin.ListShops, &pb.ListShopsRequest{})
	if err != nil {
		return nil, err
	}
	return resp.GetShopIds(), nil
}

// GetConversation answers who serves a conversation, or where it waits.
func (c *Client) GetConversation(ctx context.Context, shopID, conversationID string) (*pb.GetConversationResponse, error) {
	return unary(c, ctx, c.admin.GetConversation, &pb.GetConversationRequest{ShopId: shopID, ConversationId: conversationID})
}

// ---------------------------------------------------------------- Cluster

// GetClusterMap is the cluster map the server serves by (partition count 0 and
// no nodes for a server that is not part of a cluster).
func (c *Client) GetClusterMap(ctx context.Context) (*pb.GetClusterMapResponse, error) {
	return unary(c, ctx, c.cluster.GetClusterMap, &pb.GetClusterMapRequest{})
}

// Partition is a shop's partition in a cluster of partitionCount partitions:
// CRC-32 (IEEE) of the shop id's UTF-8 bytes, mod partitionCount.
func Partition(shopID string, partitionCount uint32) uint32 {
	if partitionCount == 0 {
		return 0
	}
	return crc32.ChecksumIEEE([]byte(shopID)) % partitionCount
}
