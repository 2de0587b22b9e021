// SPDX-License-Identifier: MIT
// The project's own test contract: the NodeRegistry read interface of docs CHAIN.md section 3,
// written from that interface alone. Not Fabstir's contract; for local test chains only.
//
// Prices are per 1,000 tokens. getModelPricing(host, modelId, token) returns the host's price
// for that model and token (token 0x0 = ETH, any other address = a stablecoin such as USDC) set
// with setModelTokenPricing; when none is set it falls back to the node's minPriceNative (ETH)
// or minPriceStable (any token). No staking: stakedAmount is always 0.
pragma solidity ^0.8.24;

import {ModelRegistry} from "./ModelRegistry.sol";

contract NodeRegistry {
    struct Node {
        address operator;
        uint256 stakedAmount;
        bool active;
        string metadata;
        string apiUrl;
        bytes32[] models;
        uint256 minPriceNative;
        uint256 minPriceStable;
    }

    ModelRegistry public immutable modelRegistry;
    mapping(address => Node) private nodes;
    address[] private registered;
    // host => registration number => modelId => token => price per 1,000 tokens (0 = not set:
    // the node's minimum). The registration number makes a re-registered host start afresh.
    mapping(address => uint256) private registrations;
    mapping(address => mapping(uint256 => mapping(bytes32 => mapping(address => uint256))))
        private prices;

    event NodeRegistered(address indexed operator, string apiUrl, bytes32[] models);
    event NodeUnregistered(address indexed operator);
    event NodeActiveChanged(address indexed operator, bool active);
    event NodeUpdated(address indexed operator, string metadata, string apiUrl);
    event ModelTokenPricingUpdated(
        address indexed operator, bytes32 indexed modelId, address indexed token, uint256 price
    );

    modifier onlyRegistered() {
        require(nodes[msg.sender].operator != address(0), "Not registered");
        _;
    }

    constructor(ModelRegistry registry) {
        modelRegistry = registry;
    }

    /// The caller registers itself as an active host serving approved models.
    function registerNode(
        string calldata metadata,
        string calldata apiUrl,
        bytes32[] calldata models,
        uint256 minPriceNative,
        uint256 minPriceStable
    ) external {
        require(nodes[msg.sender].operator == address(0), "Already registered");
        require(bytes(apiUrl).length > 0, "Empty API URL");
        require(models.length > 0, "No models");
        require(minPriceNative > 0 && minPriceStable > 0, "Price must be positive");
        for (uint256 i = 0; i < models.length; i++) {
            require(modelRegistry.isModelApproved(models[i]), "Model not approved");
        }
        registrations[msg.sender] += 1;
        nodes[msg.sender] =
            Node(msg.sender, 0, true, metadata, apiUrl, models, minPriceNative, minPriceStable);
        registered.push(msg.sender);
        emit NodeRegistered(msg.sender, apiUrl, models);
    }

    /// The caller sets its price per 1,000 tokens for one model and token (0x0 = ETH).
    function setModelTokenPricing(bytes32 modelId, address token, uint256 price)
        external
        onlyRegistered
    {
        require(nodeSupportsModel(msg.sender, modelId), "Model not supported");
        require(price > 0, "Price must be positive");
        prices[msg.sender][registrations[msg.sender]][modelId][token] = price;
        emit ModelTokenPricingUpdated(msg.sender, modelId, token, price);
    }

    function updateMetadata(string calldata metadata) external onlyRegistered {
        nodes[msg.sender].metadata = metadata;
        emit NodeUpdated(msg.sender, metadata, nodes[msg.sender].apiUrl);
    }

    function updateApiUrl(string calldata apiUrl) external onlyRegistered {
        require(bytes(apiUrl).length > 0, "Empty API URL");
        nodes[msg.sender].apiUrl = apiUrl;
        emit NodeUpdated(msg.sender, nodes[msg.sender].metadata, apiUrl);
    }

    /// The caller stops (false) or resumes (true) serving; an inactive node is not listed.
    function setActive(bool active) external onlyRegistered {
        nodes[msg.sender].active = active;
        emit NodeActiveChanged(msg.sender, active);
    }

    /// The caller leaves the registry (its record and prices are forgotten).
    function unregisterNode() external onlyRegistered {
        delete nodes[msg.sender];
        for (uint256 i = 0; i < registered.length; i++) {
            if (registered[i] == msg.sender) {
                registered[i] = registered[registered.length - 1];
                registered.pop();
                break;
            }
        }
        emit NodeUnregistered(msg.sender);
    }

    function isActiveNode(address host) public view returns (bool) {
        return nodes[host].operator != address(0) && nodes[host].active;
    }

    function nodeSupportsModel(address host, bytes32 modelId) public view returns (bool) {
        bytes32[] storage models = nodes[host].models;
        for (uint256 i = 0; i < models.length; i++) {
            if (models[i] == modelId) return true;
        }
        return false;
    }

    function getAllActiveNodes() external view returns (address[] memory) {
        return _active(bytes32(0), false);
    }

    /// Active hosts that serve the model.
    function getNodesForModel(bytes32 modelId) external view returns (address[] memory) {
        return _active(modelId, true);
    }

    function getNodeFullInfo(address host)
        external
        view
        returns (
            address operator,
            uint256 stakedAmount,
            bool active,
            string memory metadata,
            string memory apiUrl,
            bytes32[] memory models,
            uint256 minPriceNative,
            uint256 minPriceStable
        )
    {
        Node storage n = nodes[host];
        return (
            n.operator,
            n.stakedAmount,
            n.active,
            n.metadata,
            n.apiUrl,
            n.models,
            n.minPriceNative,
            n.minPriceStable
        );
    }

    /// Price per 1,000 tokens; falls back to minPriceNative (token 0x0) / minPriceStable.
    function getModelPricing(address host, bytes32 modelId, address token)
        public
        view
        returns (uint256)
    {
        uint256 price = prices[host][registrations[host]][modelId][token];
        if (price != 0) return price;
        return token == address(0) ? nodes[host].minPriceNative : nodes[host].minPriceStable;
    }

    /// The host's models and its price for each in that token.
    function getHostModelPrices(address host, address token)
        external
        view
        returns (bytes32[] memory modelIds, uint256[] memory modelPrices)
    {
        modelIds = nodes[host].models;
        modelPrices = new uint256[](modelIds.length);
        for (uint256 i = 0; i < modelIds.length; i++) {
            modelPrices[i] = getModelPricing(host, modelIds[i], token);
        }
    }

    function _active(bytes32 modelId, bool byModel) private view returns (address[] memory) {
        uint256 count = 0;
        address[] memory out = new address[](registered.length);
        for (uint256 i = 0; i < registered.length; i++) {
            address h = registered[i];
            if (nodes[h].active && (!byModel || nodeSupportsModel(h, modelId))) {
                out[count++] = h;
            }
        }
        assembly {
            mstore(out, count)
        }
        return out;
    }
}
