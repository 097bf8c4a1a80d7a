// Package dispatch is a thin Go client of the Dispatch service (protos/dispatch/v1):
// the Dispatch calls of the hot path, the Admin calls that configure shops, and
// typed errors.
//
//	c, err := dispatch.Dial(ctx, "127.0.0.1:50051", dispatch.WithInsecure())
//	if err != nil { ... }
//	defer c.Close()
//	resp, err := c.Dispatch(ctx, &dispatchv1.DispatchRequest{
//		ShopId: "shop-1", BuyerId: "buyer-1", ConversationId: "conv-1",
//	})
//	switch {
//	case dispatch.IsNotFound(err): // unknown shop
//	case dispatch.WrongNodeOf(err) != nil: // a cluster node that does not own shop-1
//	case err != nil:
//	default:
//		fmt.Println(resp.AgentId, resp.Reason)
//	}
//
// Requests and answers are the generated messages of package
// dispatch.example/client/dispatchv1. Every error answered by the server is an
// *Error (errors.As), carrying the status code, the message and, for a call
// sent to the wrong node of a cluster, the owner of the shop (WrongNode).
// Items of DispatchBatch and Operate fail one by one: FromStatus turns an
// item's error status into an *Error.
package dispatch
